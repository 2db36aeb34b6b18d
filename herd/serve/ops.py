"""The operations middleware (pure ASGI, so streaming and disconnects pass through untouched):
Bearer API keys, the request size and body-time limits, JSON-only bodies (415: a web page cannot
drive a key-less local server through a form), text that is valid Unicode, 503 while draining,
X-Request-ID, HTTP metrics, a JSON access log, and memory handed back after large requests."""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import hmac
import json
import logging
import re
import threading
import time
import uuid
from typing import Any

from herd.serve.config import LimitSettings, ServerSettings
from herd.serve.errors import error_body
from herd.serve.limits import Drain, retry_after
from herd.serve.metrics import Metrics

access_log = logging.getLogger("herd.serve.access")
log = logging.getLogger("herd.serve")
OPEN_PATHS = frozenset({"/v1/health"})  # answered without a key and while draining (readiness probes)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_JSON_TYPE = re.compile(r"^application/([a-z0-9.+-]+\+)?json$")
UPLOAD_PATHS = frozenset({"/v1/files", "/v1/openai/v1/files"})  # POST takes multipart/form-data (a file)
UPLOAD_OVERHEAD = 1 << 20  # room for the multipart framing and fields around the file itself
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # a JSON escape of a UTF-16 surrogate
TRIM_AFTER_BYTES = 1 << 20  # bodies this large leave big freed buffers behind: hand them back to the OS

Scope = dict[str, Any]


class OpsMiddleware:
    """Auth (401), draining (503), body limits (413 / 408), JSON only (415), valid Unicode (400), request ids,
    metrics and the access log around every HTTP request."""

    def __init__(self, app: Any, settings: ServerSettings, metrics: Metrics, drain: Drain | None = None,
                 limits: LimitSettings | None = None, upload_bytes: int | None = None):
        self.app = app
        self.upload_bytes = upload_bytes  # POST /v1/files: the file limit (rag.max_file_bytes); None: no uploads
        self.settings = settings
        self.metrics = metrics
        self.drain = drain
        self.limits = limits or LimitSettings()
        self.keys = [k.encode() for k in settings.api_keys]

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id") or uuid.uuid4().hex
        state = {"status": 500, "started": False}
        body: bytes | None = None

        async def send_wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode()),
                                                   (b"x-herd-version", _version().encode())]}
            await send(message)

        self.metrics.in_flight += 1
        try:
            open_path = scope["path"] in OPEN_PATHS and scope.get("method") in ("GET", "HEAD")
            if self.keys and not open_path and not self._authorized(headers):
                await _reply(send_wrapped, 401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                             extra=[(b"www-authenticate", b"Bearer")])
                return
            if self.drain is not None and self.drain.draining and not open_path:
                await _reply(send_wrapped, 503, "the server is shutting down; send the request to another "
                             "instance or retry later", extra=[(b"retry-after", retry_after(self.limits.retry_after)
                                                               .encode())])
                return
            upload = self.upload_bytes is not None and scope.get("method") == "POST" and scope["path"] in UPLOAD_PATHS
            body = await self._read_body(scope, receive, headers, send_wrapped, upload)
            if body is None:
                return
            if body and scope.get("method") in BODY_METHODS and not await self._acceptable(body, headers, send_wrapped,
                                                                                            upload):
                return
            await self.app(scope, _replay(body, receive), send_wrapped)
        finally:
            self.metrics.in_flight -= 1
            ctx = (scope.get("state") or {}).get("herd_ctx")
            if ctx is not None:
                ctx.close()  # its place in the model's queue, whatever happened
            self._record(scope, headers, rid, state["status"], time.monotonic() - start)
            if body is not None and len(body) >= TRIM_AFTER_BYTES:
                release_memory()

    async def _acceptable(self, body: bytes, headers: dict[str, str], send: Any, upload: bool = False) -> bool:
        """A request body must be JSON (else 415) holding valid Unicode text (else 400), or multipart form
        data on the upload route; answers if not."""
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if upload:
            if kind == "multipart/form-data":
                return True
            await _reply(send, 415, "file uploads must be multipart/form-data with the fields file and purpose "
                         f"(got {kind or 'no Content-Type'!r})")
            return False
        if not _JSON_TYPE.match(kind):
            got = f"Content-Type {kind!r}" if kind else "no Content-Type"
            await _reply(send, 415, f"request bodies must be JSON: send 'Content-Type: application/json' (got {got})")
            return False
        if _SURROGATE_ESCAPE.search(body):  # rare: only then decode to find an unpaired surrogate
            where = _lone_surrogate(body)
            if where is not None:
                await _reply(send, 400, f"{where or 'the body'} holds an unpaired UTF-16 surrogate escape "
                             "(e.g. \\ud800), which is not valid Unicode text", param=where or None)
                return False
        return True

    def _authorized(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer":
            token = headers.get("x-api-key", "")
        token_b = token.strip().encode()
        return any(hmac.compare_digest(token_b, k) for k in self.keys)

    async def _read_body(self, scope: Scope, receive: Any, headers: dict[str, str], send: Any,
                         upload: bool = False) -> bytes | None:
        """The whole request body, or None after answering 413 (too large) or 408 (too slow)."""
        limit = self.settings.max_request_bytes
        if upload:
            limit = max(limit, (self.upload_bytes or 0) + UPLOAD_OVERHEAD)
        try:
            declared = int(headers.get("content-length", "0") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            await _reply(send, 413, f"request body is {declared} bytes; the limit is {limit} bytes")
            return None
        chunks, size = [], 0
        deadline = time.monotonic() + self.settings.body_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                await _reply(send, 408, f"the request body did not arrive within {self.settings.body_timeout:g} s "
                             "(server.body_timeout)", extra=[(b"connection", b"close")])
                return None
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


async def _reply(send: Any, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None,
                 param: str | None = None) -> None:
    body = json.dumps(error_body(status, message, param=param)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


def _version() -> str:
    from herd import __version__

    return __version__


def _lone_surrogate(body: bytes) -> str | None:
    """The path ("messages[0].content") of the first string holding an unpaired surrogate, "" for the
    body itself, or None when there is none (or the body is not JSON: the route reports that)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None

    def walk(value: Any, path: str) -> str | None:
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path
            return None
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, v in items:
            sub = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and walk(key, sub) is not None:
                return sub
            found = walk(v, sub)
            if found is not None:
                return found
        return None

    return walk(data, "")


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


_trimming = threading.Lock()


def release_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's malloc_trim), off the event loop; large requests
    otherwise leave the process's RSS near its peak for good."""
    trim = _malloc_trim()
    if trim is None or not _trimming.acquire(blocking=False):
        return

    def run() -> None:
        try:
            trim(0)
        finally:
            _trimming.release()

    threading.Thread(target=run, name="herd-malloc-trim", daemon=True).start()
