"""Lambda entry point (``CMD ["lambda_fn.search.main.handler"]``).

Settings are read at import, so a missing DEEPFOOD_ARTIFACTS_URI fails the cold start with a clear
message. Mangum runs FastAPI's startup/shutdown on every invocation, hence ``lifespan="off"``: the model
and index are loaded once per container, on first use (or here, with DEEPFOOD_LOAD_ON_IMPORT=true).

The build's download starts before anything here imports torch (``lambda_fn.search.prefetch``), so the network and
the sha256 checks overlap the imports instead of following them; hence the imports below the ``Prefetch.start``
line. Its import-order tricks live in ``lambda_fn.search.startup``.
"""

from __future__ import annotations

# Order (lambda_fn.search.startup): pause_gc before the first heavy import, settle_gc after the last line of init.
from lambda_fn.search import startup

startup.pause_gc()

from lambda_fn.contract.config import get_settings  # noqa: E402
from lambda_fn.search.prefetch import Prefetch  # noqa: E402

settings = get_settings()
prefetch = Prefetch.start(settings)

import pybase64  # noqa: E402
from mangum import Mangum  # noqa: E402

from lambda_fn.contract import metrics  # noqa: E402
from lambda_fn.contract.logs import logger  # noqa: E402
from lambda_fn.search import snapstart  # noqa: E402
from lambda_fn.search.app import create_app  # noqa: E402


class StagePrefix:
    """Tell the app the URL prefix API Gateway's REST stage adds (``/api``), as ASGI's ``root_path``.

    API Gateway hands the function ``/docs``, but the browser asked for ``/api/docs``; without the prefix,
    the Swagger UI page fetches ``/openapi.json`` outside the stage and gets API Gateway's 403. Requests
    without a stage in their path (HTTP API ``$default``, Function URLs, custom domains) are unchanged.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            context = (scope.get("aws.event") or {}).get("requestContext") or {}
            stage = context.get("stage")
            if stage and stage != "$default" and str(context.get("path", "")).startswith(f"/{stage}/"):
                scope = {**scope, "root_path": f"/{stage}"}
        await self.app(scope, receive, send)


def decoded_body(event: dict) -> dict:
    """The event with a base64 body already decoded, by pybase64's SIMD decoder: API Gateway base64-encodes
    every binary body, and the standard library's decoder that Mangum uses is several times slower on a photo
    (docs/benchmarks.md). Mangum passes a body that is not marked base64 through as it is. A body pybase64's
    strict check refuses (whitespace, say) is left to Mangum, which decodes it as it always did."""
    body = event.get("body")
    if not event.get("isBase64Encoded") or not isinstance(body, str):
        return event
    try:
        data = pybase64.b64decode(body, validate=True)
    except ValueError:  # binascii.Error
        return event
    return {**event, "body": data, "isBase64Encoded": False}


app = create_app(settings, prefetch=prefetch)
snapstart.register(app.state.service)  # a no-op unless Lambda's runtime offers SnapStart hooks
asgi_handler = Mangum(StagePrefix(app), lifespan="off")


@metrics.flushed(metrics.search)  # the request's metrics: one EMF line at the end of each invocation
@logger.inject_lambda_context(clear_state=True)
def invoke(event: dict, context) -> dict:
    """API Gateway REST (v1), HTTP API (v2) and Function URL events, through Mangum."""
    return asgi_handler(decoded_body(event), context)


handler = metrics.traced(invoke, service=metrics.SEARCH_SERVICE, enabled=settings.tracing)
startup.settle_gc()
