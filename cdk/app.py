"""Entry point of ``npx cdk ...`` (see ``cdk.json``): builds the one stack and runs cdk-nag on it.

Context (``-c key=value``): ``artifactsBucket`` uses an existing bucket by name instead of creating one;
``artifactsPrefix`` is the key prefix the artifacts live under (default: ``lambda_fn.manifest.DEFAULT_PREFIX``).
"""

from __future__ import annotations

import aws_cdk as cdk

from cdk.nag import add_nag_checks
from cdk.stack import DeepFoodStack
from lambda_fn.manifest import DEFAULT_PREFIX

app = cdk.App()
stack = DeepFoodStack(
    app,
    "DeepFood",
    description="DeepFood image similarity search: Docker-image Lambda behind API Gateway, site on CloudFront",
    artifacts_bucket_name=app.node.try_get_context("artifactsBucket") or None,
    artifacts_prefix=app.node.try_get_context("artifactsPrefix") or DEFAULT_PREFIX,
)
add_nag_checks(app)
app.synth()
