"""The one place where failures become OpenAI-shaped HTTP responses.

FastAPI's own 422 body and Starlette's HTML/plain errors never reach a client: request validation
errors become 400 ``invalid_request_error`` naming the offending field, unknown routes become 404,
and anything unexpected becomes a 500 without a stack trace.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    EngineError,
    GatewayError,
    InvalidRequest,
    NotFound,
    Overloaded,
    RateLimited,
)
from ..metrics import UNKNOWN_MODEL, GatewayMetrics

logger = logging.getLogger(__name__)


def error_response(error: GatewayError, *, close: bool = False) -> JSONResponse:
    """``close``: tell the client this connection ends here, so a pooled client does not send its
    next request into a socket the server is closing (ECONNRESET)."""
    headers: dict[str, str] = dict(error.headers)
    if isinstance(error, RateLimited | Overloaded):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    if error.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if close:
        headers["Connection"] = "close"
    return JSONResponse(error.to_dict(), status_code=error.status_code, headers=headers or None)


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def from_validation_error(exc: RequestValidationError) -> InvalidRequest:
    """Describe the first problem the way OpenAI does: a sentence plus the field in ``param``."""
    errors: list[dict[str, Any]] = list(exc.errors())
    if not errors:
        return InvalidRequest("Invalid request body.")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return InvalidRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
            "your HTTP library correctly. The OpenAI API expects a JSON payload.)",
            code="invalid_json",
        )
    loc: list[str] = []
    for part in first.get("loc", ()):
        if part == "body":
            continue
        if isinstance(part, str) and (part in _UNION_TAGS or "[" in part):
            break  # pydantic names the union member it tried; the field is what users need
        loc.append(str(part))
    param = ".".join(loc) or None
    if first.get("type") == "extra_forbidden":
        return InvalidRequest(f"Unrecognized request argument supplied: {param}", param=param)
    if first.get("type") == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    message = first.get("msg", "Invalid value")
    return InvalidRequest(f"Invalid value for '{param}': {message}.", param=param, code="invalid_value")


CHAT_PATH = "/v1/chat/completions"


def count_refusal(metrics: GatewayMetrics, path: str, error: GatewayError) -> None:
    """Count a failed chat request that the completion path has not counted (it was refused
    before a completion began: bad JSON, a bad key, a body too large), under ``model="unknown"``."""
    if path == CHAT_PATH and error.counted_as is None:
        metrics.record_error(UNKNOWN_MODEL, error.status_code, error.error_type)
        error.counted_as = UNKNOWN_MODEL


def install_error_handlers(app: FastAPI, metrics: GatewayMetrics) -> None:
    def answer(request: Request, error: GatewayError, *, close: bool = False) -> JSONResponse:
        count_refusal(metrics, request.url.path, error)
        return error_response(error, close=close)

    async def on_gateway_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, GatewayError)
        return answer(request, exc)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return answer(request, from_validation_error(exc))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return answer(request, NotFound(f"Unknown route: {request.method} {request.url.path}"))
        error = GatewayError(str(exc.detail))
        error.status_code, error.error_type = exc.status_code, "invalid_request_error"
        return answer(request, error)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        # The server closes the connection after an unhandled error: say so in the response.
        return answer(request, EngineError("The server had an error while processing your request."), close=True)

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
