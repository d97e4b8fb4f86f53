"""What the collection tests share: the session's build and images deployed in the loopback S3 server."""

import pytest

from tests.deployment import deploy


@pytest.fixture
def deployment(s3, bucket, artifacts_dir, sample_dir, tmp_path):
    return deploy(s3, bucket, artifacts_dir, sample_dir, tmp_path / "cache")
