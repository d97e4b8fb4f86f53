"""Builds the FastAPI app from settings; `lambda_fn.main` (Lambda) and `lambda_fn.local` (local) use it."""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware

from lambda_fn import __version__, errors
from lambda_fn.config import CORS_MAX_AGE_S, Settings
from lambda_fn.logs import configure
from lambda_fn.routes import health, images, search
from lambda_fn.schemas import ErrorCode
from lambda_fn.state import ServiceState
from lambda_fn.urls import ImageLinker

log = logging.getLogger(__name__)

DESCRIPTION = """Upload a photo of a dish; get the most similar photos in the collection.

Errors are `{"error": {"code": ..., "message": ...}}`."""


def create_app(settings: Settings, *, s3_client=None) -> FastAPI:
    configure(settings.log_level)
    app = FastAPI(title="DeepFood search", version=__version__, description=DESCRIPTION)
    app.state.service = ServiceState(settings, s3_client)
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
