"""Session fixtures: a synthetic sample set, a tiny trained model, its index, and a loopback S3 server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.harness import free_port
from tests.helpers import tiny_train_args


@pytest.fixture(scope="session", autouse=True)
def _threads():
    import torch

    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    from training.sample_data import write_sample_set

    root = tmp_path_factory.mktemp("sample")
    write_sample_set(root, per_class=10, width=160, height=128, seed=0)
    return root


@pytest.fixture(scope="session")
def checkpoint_dir(sample_dir, tmp_path_factory) -> Path:
    from training.train import get_args_parser, main

    out = tmp_path_factory.mktemp("checkpoints")
    args = get_args_parser().parse_args(
        tiny_train_args(sample_dir, out, "--head-epochs", "1", "--epochs", "1", "--eval-first")
    )
    assert main(args) == 0
    return out


@pytest.fixture(scope="session")
def model_path(checkpoint_dir, tmp_path_factory) -> Path:
    from training.export import get_args_parser, main

    out = tmp_path_factory.mktemp("model") / "model.pt"
    assert main(get_args_parser().parse_args(["--checkpoint", str(checkpoint_dir / "best.pt"), "--out", str(out)])) == 0
    return out


@pytest.fixture(scope="session")
def artifacts_dir(model_path, sample_dir, tmp_path_factory) -> Path:
    from training.build_index import get_args_parser, main

    out = tmp_path_factory.mktemp("artifacts")
    args = get_args_parser().parse_args(
        [
            "--images",
            str(sample_dir),
            "--model",
            str(model_path),
            "--out",
            str(out),
            "--workers",
            "0",
            "--n-trees",
            "10",
            "--save-embeddings",
        ]
    )
    assert main(args) == 0
    return out


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-protocol server (moto in server mode) on a free loopback port."""
    from moto.server import ThreadedMotoServer

    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_SESSION_TOKEN": "testing",
        }
    )
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3, request) -> str:
    import re

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") + "-bkt"
    s3.create_bucket(Bucket=name)
    return name
