"""Builds the FastAPI app from settings; `lambda_fn.search.main` (Lambda) and `lambda_fn.search.local` (local)
use it."""

from __future__ import annotations

import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware

from lambda_fn import __version__
from lambda_fn.contract import metrics
from lambda_fn.contract.config import CORS_MAX_AGE_S, Settings
from lambda_fn.contract.logs import configure
from lambda_fn.search import errors
from lambda_fn.search.prefetch import Prefetch
from lambda_fn.search.routes import health, images, search
from lambda_fn.search.schemas import ErrorCode
from lambda_fn.search.state import ServiceState
from lambda_fn.search.urls import ImageLinker

log = logging.getLogger(__name__)

DESCRIPTION = """Upload a photo of a dish; get the most similar photos in the collection.

Errors are `{"error": {"code": ..., "message": ...}}`."""


class RequestMetrics:
    """Records each answer's metrics from what the client is sent (``lambda_fn.contract.metrics``): a search's
    ``timings`` and result count, a 4xx's error code, a 503. Reading the answer, not the routes, means every
    endpoint that returns a ``SearchResponse`` is measured the same way and no route knows about metrics.
    Only JSON bodies are kept, and only searches' and errors' are parsed; a failure here never fails a request.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status, chunks = 0, None

        async def observe(message):
            nonlocal status, chunks
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = dict(message.get("headers", ()))
                chunks = [] if headers.get(b"content-type", b"").startswith(b"application/json") else None
            elif message["type"] == "http.response.body":
                if chunks is not None:
                    chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    try:
                        _record(status, b"".join(chunks) if chunks is not None else None)
                    except Exception:
                        log.warning("metrics not recorded", exc_info=True)
            await send(message)

        await self.app(scope, receive, observe)


# The values an ErrorCode dimension may take, whatever a body says.
_ERROR_CODES = frozenset(code.value for code in ErrorCode)


def _record(status: int, body: bytes | None) -> None:
    if status == 200 and body and b'"total_ms"' in body:  # a SearchResponse; cheap test before parsing
        answer = json.loads(body)
        if isinstance(answer.get("timings"), dict) and isinstance(answer.get("results"), list):
            metrics.searched(answer["timings"], len(answer["results"]))
    elif status == 503:
        metrics.unavailable()
    elif 400 <= status < 500:
        answer = json.loads(body) if body else None
        error = answer.get("error") if isinstance(answer, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        metrics.client_error(code if code in _ERROR_CODES else ErrorCode.BAD_REQUEST.value)


def create_app(settings: Settings, *, s3_client=None, prefetch: Prefetch | None = None) -> FastAPI:
    """``prefetch``: the build's fetch already under way (``lambda_fn.search.prefetch``), which the first load takes."""
    configure(settings.log_level)
    app = FastAPI(title="DeepFood search", version=__version__, description=DESCRIPTION)
    app.state.service = ServiceState(settings, s3_client, prefetch=prefetch)
    app.state.linker = ImageLinker(settings, s3_client)
    errors.install(app)

    @app.middleware("http")
    async def access_log(request: Request, call_next):
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:  # answered here, inside CORS, so the page can read even a 500's message
            log.exception("unhandled error", extra={"path": request.url.path})
            response = errors.error_response(
                ErrorCode.INTERNAL_ERROR, "the server failed unexpectedly; the error was logged"
            )
        log.info(
            "request",
            extra={
                "method": request.method,
                "path": request.url.path,
                "status": response.status_code,
                "ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )
        return response

    app.add_middleware(RequestMetrics)  # outside the access log, so it sees the 500s answered there
    if settings.cors_origins:  # added last, so outermost: every response, errors included, gets CORS headers
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type"],
            expose_headers=list(errors.RETRY_HEADERS),
            max_age=CORS_MAX_AGE_S,
        )

    for module in (search, images, health):
        app.include_router(module.router)
    if settings.load_on_import:
        app.state.service.try_load()
    return app
