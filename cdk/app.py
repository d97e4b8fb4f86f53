"""Entry point of ``npx cdk ...`` (see ``cdk.json``): builds the one stack and runs cdk-nag on it.

Its options are CDK context (``-c key=value``); ``cdk.context`` lists them and reads them.
"""

from __future__ import annotations

import aws_cdk as cdk

from cdk.context import stack_options
from cdk.nag import add_nag_checks
from cdk.stack import DeepFoodStack

app = cdk.App()
try:
    stack = DeepFoodStack(
        app,
        "DeepFood",
        description="DeepFood image similarity search: Docker-image Lambda behind API Gateway, site on CloudFront",
        **stack_options(app),
    )
except ValueError as exc:  # a setting the constructs refuse (sizes, limits, a malformed value): say which
    raise SystemExit(f"error: {exc}") from None
add_nag_checks(app)
app.synth()
