"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Handlers raise :class:`APIError`; the app turns it into the JSON body and status. Any
other exception becomes a 500 whose message says nothing about the internals (the
traceback goes to the server log only).
"""

from __future__ import annotations

import math
import re

from pydantic import ValidationError
from starlette.responses import JSONResponse

_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\[\]]*): ")


class APIError(Exception):
    """An error to return to the client as it is."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def from_validation(e: ValidationError) -> APIError:
    """400 naming the first offending field (``messages.0.role``)."""
    errors = e.errors(include_url=False)
    # For a union (``prompt``: text | texts | ids | id lists) pydantic reports one error
    # per member; a constraint error (too short, negative id) says more than "not a string".
    err = next((x for x in errors if not x["type"].endswith("_type")), errors[0])
    # Union members add their type to the location ("prompt.list[str]"): keep field names.
    loc = [
        str(p)
        for p in err["loc"]
        if not (isinstance(p, str) and (p in _TYPE_NAMES or "[" in p or "-" in p))
    ]
    param = ".".join(loc) or None
    msg = err["msg"].removeprefix("Value error, ")
    m = _FIELD.match(msg)
    if m:  # a model validator that names its field ("echo: ...")
        param, msg = m.group(1), msg[m.end() :]
    message = f"{param}: {msg}" if param else msg
    return bad_request(
        message,
        param,
        "invalid_value" if err["type"] != "missing" else "missing_required_parameter",
    )


_TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list", "none", "literal"}


def from_value_error(e: ValueError) -> APIError:
    """400 for a ``ValueError("field: problem")`` raised while building or admitting a request."""
    msg = str(e)
    m = _FIELD.match(msg)
    param = m.group(1) if m else None
    code = (
        "context_length_exceeded"
        if "context" in msg and param in ("prompt", "messages", "max_tokens")
        else None
    )
    return bad_request(msg, param, code)


def rejected(reason: str, retry_after: float) -> APIError:
    """429 for an admission rejection, with ``Retry-After`` in whole seconds."""
    seconds = max(1, math.ceil(retry_after)) if math.isfinite(retry_after) else 1
    return APIError(
        429,
        f"request rejected by admission control ({reason}); retry after {seconds} s",
        "rate_limit_error",
        None,
        "rejected",
        {"Retry-After": str(seconds)},
    )


def too_large(limit: int) -> APIError:
    """413 for a body over the server's limit."""
    return APIError(
        413,
        f"request body is larger than the limit of {limit} bytes",
        "invalid_request_error",
        None,
        "request_too_large",
    )


def unavailable(lost: bool) -> APIError:
    """503 when no worker can serve the request now (``lost``: the one serving it left
    and none could take it over). Internals (addresses) stay in the server log."""
    if lost:
        return APIError(
            503,
            "the worker serving this request was lost and "
            "no other worker could take it over; retry",
            "server_error",
            None,
            "worker_lost",
            {"Retry-After": "1"},
        )
    return APIError(
        503,
        "no worker can serve this request now; retry",
        "server_error",
        None,
        "unavailable",
        {"Retry-After": "1"},
    )


def internal() -> APIError:
    return APIError(500, "internal server error", "server_error")


def unauthorized() -> APIError:
    return APIError(
        401,
        "invalid or missing API key (send 'Authorization: Bearer <key>')",
        "authentication_error",
        None,
        "invalid_api_key",
    )


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"model: the model {model!r} does not exist",
        "invalid_request_error",
        "model",
        "model_not_found",
    )


__all__ = [
    "APIError",
    "bad_request",
    "from_validation",
    "from_value_error",
    "internal",
    "model_not_found",
    "rejected",
    "too_large",
    "unauthorized",
    "unavailable",
]
