"""API errors: every failure answers ``{"error": {"code", "message"}}`` with the status its code belongs to."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lambda_fn.search.schemas import STATUS, ErrorCode, ErrorDetail, ErrorResponse

# Seconds a client should wait before retrying a 503 (the model and index are loading or failed to load).
RETRY_AFTER_S = 5
RETRY_HEADERS = {"Retry-After": str(RETRY_AFTER_S)}


class ApiError(Exception):
    """An answer for the client: ``code`` fixes the HTTP status, ``message`` says what to do."""

    def __init__(self, code: ErrorCode, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code, self.message, self.headers = code, message, headers

    @property
    def status(self) -> int:
        return self.code.status


class NotReady(ApiError):
    """503: the build cannot be served now; ``retry_after_s`` is when the next attempt to load it may be."""

    def __init__(self, message: str, retry_after_s: int = RETRY_AFTER_S):
        super().__init__(ErrorCode.NOT_READY, message, {"Retry-After": str(retry_after_s)})


def error_response(
    code: ErrorCode, message: str, *, status: int | None = None, headers: dict | None = None
) -> JSONResponse:
    """The JSON error body; ``status`` defaults to the one ``code`` belongs to. 503s carry Retry-After."""
    status = status or code.status
    if status == 503:
        headers = {**RETRY_HEADERS, **(headers or {})}
    body = ErrorResponse(error=ErrorDetail(code=code, message=message))
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


_DESCRIPTIONS = {
    400: "Not an image, corrupt image or bad base64",
    413: "Upload or image dimensions too large",
    415: "Unsupported content type or image format",
    422: "Invalid parameters",
    503: "Model or index not loaded; retry shortly",
}


def _codes_for(status: int) -> str:
    return ", ".join(f"`{code.value}`" for code, s in STATUS.items() if s == status)


ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": f"{text} (codes: {_codes_for(status)})"}
    for status, text in _DESCRIPTIONS.items()
}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


# What Starlette's and FastAPI's own HTTPExceptions mean here. Each code answers with its one status
# (``STATUS``); a status not listed becomes ``bad_request`` (4xx) or ``internal_error`` (5xx).
_HTTP_CODES = {
    400: ErrorCode.BAD_REQUEST,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_TYPE,
    422: ErrorCode.INVALID_PARAMETERS,
}


def install(app: FastAPI) -> None:
    """Exception handlers for expected errors. Unexpected ones become a 500 in the app's access-log
    middleware, which sits inside CORS so the page can read that message too."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return error_response(exc.code, exc.message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        return error_response(ErrorCode.INVALID_PARAMETERS, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code)
        if code is None:
            code = ErrorCode.INTERNAL_ERROR if exc.status_code >= 500 else ErrorCode.BAD_REQUEST
        # keep the exception's headers: a 405 must list the allowed methods in `Allow` (RFC 9110)
        return error_response(code, str(exc.detail), headers=getattr(exc, "headers", None))
