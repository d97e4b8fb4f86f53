"""Lambda entry point (``CMD ["lambda_fn.main.handler"]``).

Settings are read at import, so a missing DEEPFOOD_ARTIFACTS_URI fails the cold start with a clear
message. Mangum runs FastAPI's startup/shutdown on every invocation, hence ``lifespan="off"``: the model
and index are loaded once per container, on first use (or here, with DEEPFOOD_LOAD_ON_IMPORT=true).
"""

from __future__ import annotations

from mangum import Mangum

from lambda_fn.app import create_app
from lambda_fn.config import get_settings
from lambda_fn.logs import logger

app = create_app(get_settings())
asgi_handler = Mangum(app, lifespan="off")


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict, context) -> dict:
    """API Gateway REST (v1), HTTP API (v2) and Function URL events, through Mangum."""
    return asgi_handler(event, context)
