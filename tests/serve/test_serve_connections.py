"""Connection-level limits of a real `herd serve`, driven with raw sockets: slowloris and stalled
connections are answered 408 or closed after `header_timeout`, an oversized head gets 431, idle
kept-alive connections close after `keep_alive_timeout`, and beyond `max_connections` requests get 503."""
from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servekit import SMOL_ID, ServerProcess

HEADER_TIMEOUT = 1.5
KEEP_ALIVE = 1.0
MAX_HEADER = 4096
MAX_CONNECTIONS = 64
SLACK = 1.5  # a loaded 2-core machine
CONFIG = f"""
version: 1
server:
  header_timeout: {HEADER_TIMEOUT}
  keep_alive_timeout: {KEEP_ALIVE}
  max_header_bytes: {MAX_HEADER}
  max_connections: {MAX_CONNECTIONS}
models:
  - id: {SMOL_ID}
    engine: {{num_blocks: 64, max_num_seqs: 4}}
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    cfg: Path = tmp_path_factory.mktemp("conn") / "server.yaml"
    cfg.write_text(CONFIG)
    proc = ServerProcess("--config", str(cfg), "--embedding-model", "none")
    yield proc
    assert proc.stop() == 0, proc.output()[-3000:]


def connect(srv: ServerProcess) -> socket.socket:
    host, port = srv.url.removeprefix("http://").rsplit(":", 1)  # type: ignore[union-attr]
    return socket.create_connection((host, int(port)), timeout=10)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a content-length: status, lower-cased headers, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a response body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True when the server closes the connection (recv returns b"") within `timeout`."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: herd\r\n{extra}\r\n".encode()


def test_slowloris_gets_408(srv: ServerProcess) -> None:
    with connect(srv) as s:
        start = time.monotonic()
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: herd\r\nX-Slow: ")
        while not select.select([s], [], [], 0.3)[0]:  # a byte every 0.3 s until the server answers
            assert time.monotonic() - start < HEADER_TIMEOUT + SLACK, "still open past header_timeout"
            s.send(b"a")
        status, headers, body = read_response(s)
        elapsed = time.monotonic() - start
        assert status == 408 and headers["connection"] == "close"
        error = json.loads(body)["error"]
        assert error["type"] == "timeout_error" and "header_timeout" in error["message"]
        assert HEADER_TIMEOUT - 0.2 < elapsed < HEADER_TIMEOUT + SLACK
        assert closed_by_server(s, 2)


def test_stalled_connections_are_closed(srv: ServerProcess) -> None:
    idle = [connect(srv) for _ in range(200)]
    half = [connect(srv) for _ in range(50)]
    for s in half:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: herd\r\nContent-Ty")
    deadline = time.monotonic() + HEADER_TIMEOUT + SLACK
    try:
        for s in idle:  # nothing sent: closed without an answer
            s.settimeout(max(0.01, deadline - time.monotonic()))
            assert s.recv(100) == b""
        for s in half:  # a partial head: 408, then closed
            s.settimeout(max(0.01, deadline - time.monotonic()))
            assert read_response(s)[0] == 408
            assert closed_by_server(s, max(0.01, deadline - time.monotonic()))
    finally:
        for s in idle + half:
            s.close()
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.get("/v1/health").status_code == 200
        r = c.post("/v1/chat/completions", json={"model": SMOL_ID, "max_tokens": 2, "temperature": 0,
                                                 "messages": [{"role": "user", "content": "Hi"}]})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


def test_oversized_head_gets_431(srv: ServerProcess) -> None:
    with connect(srv) as s:  # one 8 KB header, in one piece
        s.sendall(get("/v1/health", f"X-Big: {'a' * 8192}\r\n"))
        status, headers, body = read_response(s)
        assert status == 431 and headers["connection"] == "close"
        error = json.loads(body)["error"]
        assert str(MAX_HEADER) in error["message"] and "max_header_bytes" in error["message"]
        assert closed_by_server(s, 2)
    with connect(srv) as s:  # the same in 1 KB pieces, never finished: counted across reads
        for i in range(6):
            s.sendall(b"GET /v1/health HTTP/1.1\r\n" if i == 0 else f"X-{i}: {'b' * 1000}\r\n".encode())
            time.sleep(0.05)
        assert read_response(s)[0] == 431
    with connect(srv) as s:  # a 2 KB header is fine
        s.sendall(get("/v1/health", f"X-Pad: {'c' * 2048}\r\nConnection: close\r\n"))
        status, _, body = read_response(s)
        assert status == 200 and json.loads(body)["status"] == "OK"
    big = {"model": SMOL_ID, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}], "user": "u" * 65536}
    r = httpx.post(f"{srv.url}/v1/chat/completions", json=big, timeout=60)  # a body is not capped by the head's cap
    assert r.status_code == 200, r.text


def test_keep_alive(srv: ServerProcess) -> None:
    with httpx.Client(base_url=srv.url, timeout=60) as c:  # reuses its connection; reconnects after a close
        for pause in (0, 0.2, 0.2, KEEP_ALIVE + 0.5, 0):
            time.sleep(pause)
            assert c.get("/v1/health").status_code == 200
    with connect(srv) as s:  # pipelined requests are answered in order
        s.sendall(get("/v1/health") + get("/v1/version") + get("/v1/health", "Connection: close\r\n"))
        s.settimeout(10)
        data = b"".join(iter(lambda: s.recv(65536), b""))  # to the server's close after the third
        assert [part[:3] for part in data.split(b"HTTP/1.1 ")[1:]] == [b"200"] * 3
        assert data.index(b'"status"') < data.index(b'"version"') < data.rindex(b'"status"')
    with connect(srv) as s:  # an idle kept-alive connection is closed after keep_alive_timeout
        s.sendall(get("/v1/health"))
        assert read_response(s)[0] == 200
        start = time.monotonic()
        assert closed_by_server(s, KEEP_ALIVE + SLACK)
        assert time.monotonic() - start > KEEP_ALIVE - 0.2
    with connect(srv) as s:  # after a response, the next head has header_timeout again: 408
        s.sendall(get("/v1/health"))
        assert read_response(s)[0] == 200
        start = time.monotonic()
        s.sendall(b"GET /v1/health HTTP/1.1\r\n")
        assert read_response(s)[0] == 408
        assert HEADER_TIMEOUT - 0.2 < time.monotonic() - start < HEADER_TIMEOUT + SLACK


def test_max_connections_gets_503(srv: ServerProcess) -> None:
    """uvicorn's limit_concurrency, checked when a request head arrives: while more than max_connections
    are open, every request gets uvicorn's plain-text 503 "Service Unavailable" (not Herd's JSON shape)."""
    held = [connect(srv) for _ in range(MAX_CONNECTIONS - 1)]
    try:
        with connect(srv) as s:  # the 64th connection: within the limit
            s.sendall(get("/v1/health", "Connection: close\r\n"))
            assert read_response(s)[0] == 200
        held.append(connect(srv))
        with connect(srv) as s:  # the 65th
            s.sendall(get("/v1/health"))
            status, headers, body = read_response(s)
            assert (status, headers["connection"], body) == (503, "close", b"Service Unavailable")
    finally:
        for s in held:
            s.close()
    assert httpx.get(f"{srv.url}/v1/health", timeout=30).status_code == 200
