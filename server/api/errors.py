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
RESPONSES_PATH = "/v1/responses"


def count_refusal(metrics: GatewayMetrics, path: str, error: GatewayError) -> None:
    """Count a failed chat request that the completion path has not counted (it was refused
    before a completion began: bad JSON, a bad key, a body too large), under ``model="unknown"``."""
    if path in (CHAT_PATH, RESPONSES_PATH) and error.counted_as is None:
        metrics.record_error(UNKNOWN_MODEL, error.status_code, error.error_type)
        error.counted_as = UNKNOWN_MODEL


class ErrorResponder:
    """Any failure of a request -> its OpenAI-shaped response, counted. FastAPI's exception handlers
    call it, and so does the chat route's own entry (``api.chat.FastEndpoint``), so both answer a
    failure alike."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def __call__(self, exc: Exception, method: str, path: str) -> JSONResponse:
        close = False
        if isinstance(exc, GatewayError):
            error = exc
        elif isinstance(exc, RequestValidationError):
            error = from_validation_error(exc)
        elif isinstance(exc, RecursionError):  # a body nested past Python's stack (FastAPI's json.loads)
            error = InvalidRequest("The JSON body is nested too deeply.", code="invalid_json")
        elif isinstance(exc, StarletteHTTPException):
            if exc.status_code == 404:
                error = NotFound(f"Unknown route: {method} {path}")
            else:
                error = GatewayError(str(exc.detail))
                error.status_code, error.error_type = exc.status_code, "invalid_request_error"
        else:
            logger.error("unhandled error on %s", path, exc_info=exc)
            # The server closes the connection after an unhandled error: say so in the response.
            error, close = EngineError("The server had an error while processing your request."), True
        count_refusal(self.metrics, path, error)
        return error_response(error, close=close)


def install_error_handlers(app: FastAPI, respond: ErrorResponder) -> None:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return respond(exc, request.method, request.url.path)

    for kind in (GatewayError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, handler)
