"""The operations middleware (pure ASGI, so streaming and disconnects pass through untouched):
Bearer API keys, the request size limit, X-Request-ID, HTTP metrics and a JSON access log."""
from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from typing import Any

from herd.serve.config import ServerSettings
from herd.serve.errors import error_body
from herd.serve.metrics import Metrics

access_log = logging.getLogger("herd.serve.access")
OPEN_PATHS = frozenset({"/v1/health", "/health", "/"})  # answered without a key (readiness probes)

Scope = dict[str, Any]


class OpsMiddleware:
    """Auth (401), body limit (413), request ids, metrics and the access log around every HTTP request."""

    def __init__(self, app: Any, settings: ServerSettings, metrics: Metrics):
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.keys = [k.encode() for k in settings.api_keys]

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id") or uuid.uuid4().hex
        state = {"status": 500, "started": False}

        async def send_wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode()),
                                                   (b"x-herd-version", _version().encode())]}
            await send(message)

        self.metrics.in_flight += 1
        try:
            if self.keys and scope["path"] not in OPEN_PATHS and not self._authorized(headers):
                await _reply(send_wrapped, 401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                             extra=[(b"www-authenticate", b"Bearer")])
                return
            body_or_none = await self._read_body(scope, receive, headers, send_wrapped)
            if body_or_none is None:
                return
            if scope.get("method") == "POST" and headers.get("content-type", "").split(";")[0].strip() in (
                    "", "application/x-www-form-urlencoded"):  # e.g. `curl -d '{...}'` without -H: it is JSON
                scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"] + [
                    (b"content-type", b"application/json")]
            await self.app(scope, _replay(body_or_none, receive), send_wrapped)
        finally:
            self.metrics.in_flight -= 1
            self._record(scope, headers, rid, state["status"], time.monotonic() - start)

    def _authorized(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer":
            token = headers.get("x-api-key", "")
        token_b = token.strip().encode()
        return any(hmac.compare_digest(token_b, k) for k in self.keys)

    async def _read_body(self, scope: Scope, receive: Any, headers: dict[str, str], send: Any) -> bytes | None:
        """The whole request body, or None after answering 413."""
        limit = self.settings.max_request_bytes
        try:
            declared = int(headers.get("content-length", "0") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            await _reply(send, 413, f"request body is {declared} bytes; the limit is {limit} bytes")
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _reply(send, 413, f"request body is over the limit of {limit} bytes")
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _record(self, scope: Scope, headers: dict[str, str], rid: str, status: int, seconds: float) -> None:
        pattern = getattr(scope.get("route"), "path", None)
        if pattern is None:  # no route matched: do not let arbitrary paths become label values
            path = "unmatched"
        else:
            path = pattern if "{" in pattern else scope["path"]
        method = scope.get("method", "")
        self.metrics.requests.inc(route=path, method=method, status=str(status))
        self.metrics.duration.observe(seconds, route=path)
        if self.settings.access_log:
            entry = {"ts": round(time.time(), 3), "request_id": rid, "method": method, "path": scope["path"],
                     "status": status, "duration_ms": round(seconds * 1000, 1),
                     "client": (scope.get("client") or ("", 0))[0], "user_agent": headers.get("user-agent", "")}
            ctx = (scope.get("state") or {}).get("herd_ctx")
            if ctx is not None:
                entry.update(ctx.log_fields())
            access_log.info(json.dumps(entry, ensure_ascii=False))


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server would say it

    return replay


async def _reply(send: Any, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(error_body(status, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


def _version() -> str:
    from herd import __version__

    return __version__
