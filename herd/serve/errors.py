"""HTTP errors in the OpenAI shape, readable by Llama Stack clients too.

Every error body is `{"error": {"message", "type", "param", "code", "detail"}}`: `message`/`type`/
`param`/`code` are what the `openai` client reads, `detail` is what Llama Stack 0.2 sends.
"""
from __future__ import annotations

from typing import Any

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    500: "server_error",
    501: "not_implemented_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class APIError(Exception):
    """An error answered to the client with `status` and an OpenAI-style body."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None,
        type: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The JSON body for this error."""
        return error_body(self.status, self.message, param=self.param, code=self.code, type=self.type)


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None, type: str | None = None
) -> dict[str, Any]:
    """`{"error": {...}}` for a status and message."""
    kind = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code, "detail": message}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 invalid_request_error."""
    return APIError(400, message, param=param, code=code)


def not_found(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 404."""
    return APIError(404, message, param=param, code=code)


async def api_error_response(_: Any, e: APIError) -> Any:
    """The FastAPI exception handler for APIError: its status, body and headers."""
    from fastapi.responses import JSONResponse

    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)
