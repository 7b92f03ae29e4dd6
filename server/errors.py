"""The one exception tree of lora-gateway.

Every failure a client can see is a ``GatewayError``; ``server.api.errors`` renders it to OpenAI's
``{"error": {"message", "type", "param", "code"}}`` body in exactly one place. Code below the API
raises these (or maps foreign exceptions at its own boundary with ``raise X(...) from exc``), so no
route ever chooses a status code by reading an error message.

    GatewayError
    ├── InvalidRequest            400 invalid_request_error (param names the field)
    │   ├── UnsupportedParameter  400, code "unsupported_parameter"
    │   ├── ContextLengthExceeded 400, code "context_length_exceeded"
    │   ├── AdapterRejected       400, code = the reason            (registry: validation, weights_file)
    │   ├── AdapterIncomplete     400, code "adapter_incomplete"    (registry: a copy still arriving)
    │   ├── CiphertextInvalid     400, code "invalid_ciphertext"    (integrations.wecom.crypto)
    │   ├── ReceiveIdMismatch     400, code "invalid_receive_id"    (integrations.wecom.crypto)
    │   └── MalformedMessage      400, code "invalid_wecom_message" (integrations.wecom.messages)
    ├── Unauthorized              401 authentication_error, code "invalid_api_key"
    ├── PermissionDenied          403 permission_error
    │   └── SignatureMismatch     403, code "invalid_signature"     (integrations.wecom.crypto)
    ├── ModelNotFound             404 invalid_request_error, code "model_not_found"
    ├── NotFound                  404 invalid_request_error (routes)
    ├── RequestTimeout            408 invalid_request_error (a body that never arrives)
    ├── RequestTooLarge           413 invalid_request_error
    ├── RateLimited               429 rate_limit_error, code "rate_limit_exceeded" (Retry-After)
    │   └── QuotaExceeded         429 insufficient_quota                (tenancy: a key's token quota)
    ├── EngineError               500 server_error (one request failed; the engine lives on)
    │   └── UpstreamLost          502, code "upstream_lost" (remote: an upstream failed mid-stream)
    └── EngineUnavailable         503 server_error (not loaded yet, or shutting down)
        └── Overloaded            503, code "queue_full" (Retry-After: the engine's queue is full)
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class: carries everything needed to render an OpenAI error body."""

    status_code: int = 500
    error_type: str = "server_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        # Set by the completion path when it has counted this failure in the metrics (under that
        # model label); a failure raised before any completion began (auth, validation) has none.
        self.counted_as: str | None = None
        self.headers: dict[str, str] = {}  # sent with the error (x-ratelimit-* on a 429)

    def to_dict(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class UnsupportedParameter(InvalidRequest):
    default_code = "unsupported_parameter"


class ContextLengthExceeded(InvalidRequest):
    default_code = "context_length_exceeded"


class AdapterIncomplete(InvalidRequest):
    """The adapter's files are not all there yet (a copy in progress)."""

    default_code = "adapter_incomplete"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="lora_path")


class AdapterRejected(InvalidRequest):
    """``reason`` is a short label for metrics and the error code; the message is the one line shown to users."""

    def __init__(self, reason: str, message: str, *, param: str = "lora_path") -> None:
        super().__init__(message, param=param, code=reason)
        self.reason = reason


class Unauthorized(GatewayError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"

    # OpenAI's words, for every place that checks a key (the admin key, --api-key, stored keys).
    MISSING = (
        "You didn't provide an API key. You need to provide your API key in an Authorization header "
        "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
    )
    WRONG = "Incorrect API key provided."


class PermissionDenied(GatewayError):
    status_code = 403
    error_type = "permission_error"


class ModelNotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "model_not_found"

    def __init__(self, model: str, message: str | None = None) -> None:
        super().__init__(message or f"The model `{model}` does not exist.", param="model")


class NotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class RequestTimeout(GatewayError):
    status_code = 408
    error_type = "invalid_request_error"
    default_code = "request_timeout"


class RequestTooLarge(GatewayError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimited(GatewayError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QuotaExceeded(RateLimited):
    """A key's daily or monthly token quota is spent (OpenAI's ``insufficient_quota``)."""

    error_type = "insufficient_quota"
    default_code = "insufficient_quota"


class EngineError(GatewayError):
    status_code = 500
    error_type = "server_error"
    default_code = "engine_error"


class UpstreamLost(EngineError):
    """An upstream failed after it had started streaming an answer, part of which its client may
    have. (A non-streaming answer arrives whole, so the remote engine fails it over instead.)"""

    status_code = 502
    default_code = "upstream_lost"


class EngineUnavailable(GatewayError):
    status_code = 503
    error_type = "server_error"
    default_code = "engine_unavailable"


class Overloaded(EngineUnavailable):
    """More requests wait for the engine than ``--max-queued-requests``: retry shortly."""

    default_code = "queue_full"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``exc``'s message, cut to ``limit``: library errors often span
    paragraphs, and a start-up or command failure is reported in one line."""
    line = next((text.strip() for text in str(exc).splitlines() if text.strip()), type(exc).__name__)
    return line if len(line) <= limit else line[: limit - 3] + "..."
