"""Helpers for the tool tests: fake Brave / Tavily / Wolfram|Alpha APIs (stdlib HTTP servers on loopback
that speak each API's real JSON and record what they were sent) and the tiny MCP server as a process."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

HERE = Path(__file__).resolve().parent
MCP_SERVER = HERE / "mcp_server.py"
BRAVE_KEY, TAVILY_KEY, WOLFRAM_KEY = "brave-test-key", "tvly-test-key", "WOLF-TEST"


@dataclass
class Seen:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


Handler = Callable[[Seen], tuple[int, Any]]


@dataclass
class FakeAPI:
    """A JSON API on 127.0.0.1 in a thread; `handler(seen) -> (status, json)` answers each request."""

    handler: Handler
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        fake = self

        class _H(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                seen = Seen(self.command, url.path, parse_qs(url.query), {k.lower(): v for k, v in self.headers.items()},
                            json.loads(raw) if raw else None)
                fake.seen.append(seen)
                status, body = fake.handler(seen)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def brave(seen: Seen) -> tuple[int, Any]:
    """Brave's /res/v1/web/search: 401 without the key, else two results echoing the query."""
    if seen.path != "/res/v1/web/search":
        return 404, {"error": "not found"}
    if seen.headers.get("x-subscription-token") != BRAVE_KEY:
        return 401, {"type": "ErrorResponse", "error": {"status": 401, "code": "SUBSCRIPTION_TOKEN_INVALID"}}
    q = seen.query.get("q", [""])[0]
    return 200, {"type": "search", "query": {"original": q}, "web": {"type": "search", "results": [
        {"title": f"<strong>{q}</strong> - Wikipedia", "url": "https://en.wikipedia.org/wiki/Llama",
         "description": f"The <strong>{q}</strong> is a domesticated South American camelid &amp; more."},
        {"title": "Second hit", "url": "https://example.com/2", "description": "Another page."}]}}


def tavily(seen: Seen) -> tuple[int, Any]:
    """Tavily's POST /search: 401 without the Bearer key, else one result echoing the query."""
    if seen.path != "/search" or seen.method != "POST":
        return 404, {"detail": "not found"}
    if seen.headers.get("authorization") != f"Bearer {TAVILY_KEY}":
        return 401, {"detail": {"error": "Unauthorized: missing or invalid API key."}}
    q = (seen.body or {}).get("query", "")
    return 200, {"query": q, "answer": None, "images": [], "response_time": 0.5, "results": [
        {"title": f"About {q}", "url": "https://tavily.example/1", "content": f"{q} explained.", "score": 0.9}]}


def wolfram(seen: Seen) -> tuple[int, Any]:
    """The v2 query API (output=json): an invalid appid is a 200 with queryresult.error, as the real one."""
    if seen.path != "/v2/query":
        return 404, {"error": "not found"}
    q = seen.query
    if q.get("appid", [""])[0] != WOLFRAM_KEY:
        return 200, {"queryresult": {"success": False, "error": {"code": "1", "msg": "Invalid appid"}, "numpods": 0}}
    if q.get("output") != ["json"]:
        return 400, {"error": "expected output=json"}
    text = q.get("input", [""])[0]
    if "gibberish" in text:
        return 200, {"queryresult": {"success": False, "error": False, "numpods": 0,
                                     "didyoumeans": {"score": "0.4", "level": "low", "val": "gibbon"}}}
    return 200, {"queryresult": {"success": True, "error": False, "numpods": 2, "pods": [
        {"title": "Input interpretation", "id": "Input", "subpods": [{"title": "", "plaintext": text}]},
        {"title": "Result", "id": "Result", "primary": True, "subpods": [{"title": "", "plaintext": "42"}]}]}}


class MCPServerProcess:
    """tests/tools/mcp_server.py over HTTP ("http") or SSE ("sse"), as a real process; `.url` once it listens."""

    def __init__(self, kind: str = "http", timeout: float = 60) -> None:
        self.proc = subprocess.Popen([sys.executable, str(MCP_SERVER), kind], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.url = ""
        done = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                m = re.search(r"listening on (\S+)", line)
                if m:
                    self.url = m.group(1)
                    done.set()
            done.set()

        threading.Thread(target=read, daemon=True).start()
        if not done.wait(timeout) or not self.url:
            self.stop()
            raise RuntimeError("the test MCP server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
