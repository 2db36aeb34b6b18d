"""Running the app: uvicorn, the startup line with the URL, and a graceful drain on SIGINT/SIGTERM.

Exit status: 0 after a clean drain, 1 when the server could not start, 3 when the drain timeout ran
out and in-flight requests were cut (streams ended with an error event, others answered 503)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Generator
from typing import Any

import uvicorn

from herd.serve.app import create_app
from herd.serve.config import ServerConfig
from herd.serve.connection import protocol_class
from herd.serve.limits import DRAIN_MARGIN, Drain
from herd.serve.models import ModelRegistry

HANDLED = (signal.SIGINT, signal.SIGTERM)
EXIT_DRAIN_CUT = 3


class _Server(uvicorn.Server):
    """uvicorn.Server that prints its URL once listening and exits 0 after a signal-initiated drain."""

    def __init__(self, config: uvicorn.Config, registry: ModelRegistry, url_host: str, drain: Drain,
                 drain_timeout: float):
        super().__init__(config)
        self.registry = registry
        self.url_host = url_host
        self.drain, self.drain_timeout = drain, drain_timeout
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: Any = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.should_exit or not self.servers:
            return
        port = self.servers[0].sockets[0].getsockname()[1]
        base = f"http://{self.url_host}:{port}"
        print(f"herd serve: listening on {base}  (OpenAI base_url {base}/v1; models: "
              f"{', '.join(self.registry.ids)}; Ctrl-C to stop)", flush=True)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in HANDLED}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame: Any) -> None:
        if self.should_exit:  # a second signal: stop waiting for in-flight requests
            self.force_exit = True
            return
        self.should_exit = True
        if self.loop is not None:  # new requests get 503; in-flight ones are cut at the drain timeout
            self.drain.start(self.loop, self.drain_timeout)
        print(f"herd serve: {signal.Signals(sig).name}: finishing in-flight requests "
              f"(up to {self.drain_timeout:g} s; again to stop now)", file=sys.stderr, flush=True)


def _logging(level: str, access_log: bool) -> None:
    fmt = logging.Formatter("%(message)s")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(fmt)
    for name in ("herd.serve", "herd.serve.access", "herd.engine"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(level.upper())
    logging.getLogger("herd.serve.access").disabled = not access_log


def run_server(config: ServerConfig, *, progress: bool = True) -> int:
    """Load the models, serve until a signal, drain, return the exit status."""
    s = config.server
    _logging(s.log_level, s.access_log)
    registry = ModelRegistry.load(config.models, progress=progress)
    app = create_app(registry, config)
    uconfig = uvicorn.Config(app, host=s.host, port=s.port, log_level=s.log_level.lower(), access_log=False,
                             # the app cuts what is left at drain_timeout (with an answer); uvicorn waits a
                             # little longer for those answers to go out
                             timeout_graceful_shutdown=s.drain_timeout + 2 * DRAIN_MARGIN, lifespan="on",
                             http=protocol_class(s),
                             loop="asyncio", server_header=False, timeout_keep_alive=s.keep_alive_timeout,
                             # uvicorn counts the connection asking, so +1: beyond max_connections get 503
                             limit_concurrency=s.max_connections + 1,
                             h11_max_incomplete_event_size=s.max_header_bytes)  # connection.py feeds h11 no more
    url_host = f"[{s.host}]" if ":" in s.host else ("127.0.0.1" if s.host in ("0.0.0.0", "") else s.host)
    server = _Server(uconfig, registry, url_host, app.state.drain, s.drain_timeout)
    try:
        server.run()
    finally:
        registry.shutdown()
    if not server.started:
        print(f"herd serve: could not start on {s.host}:{s.port} (see the error above)", file=sys.stderr)
        return 1
    if app.state.drain.cut:
        print(f"herd serve: the drain timeout ({s.drain_timeout:g} s) ran out: {app.state.drain.cut} in-flight "
              f"request(s) were cut", file=sys.stderr, flush=True)
        return EXIT_DRAIN_CUT
    print("herd serve: stopped", file=sys.stderr, flush=True)
    return 0
