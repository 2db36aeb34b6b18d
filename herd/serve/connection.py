"""Connection-level limits for `herd serve`: uvicorn's h11 protocol with a request-head deadline and size cap.

uvicorn bounds idle kept-alive connections (`timeout_keep_alive`) and open connections
(`limit_concurrency`), but not a client that trickles its request head (slowloris) or parks a new
connection without sending anything, and it answers an oversized head with a plain 400. This
subclass adds, per connection:
- a header timer (`header_timeout`), armed when the connection opens and after each response on a
  kept-alive connection, cancelled when a request head is complete: then a partial head gets 408,
  nothing at all gets a plain close;
- a head-size cap (`max_header_bytes`): h11 is never fed more than the cap while it waits for a head,
  so a longer one gets 431 here instead of h11's 400.

Hooks into uvicorn (check them on a uvicorn upgrade): `connection_made`, `connection_lost`,
`data_received`, `handle_events` (a new `self.cycle` means a head arrived), `on_response_complete`
and `handle_websocket_upgrade` of `uvicorn.protocols.http.h11_impl.H11Protocol`.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import ClassVar

import h11
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from herd.serve.config import ServerSettings
from herd.serve.errors import error_body

log = logging.getLogger("herd.serve")


class HerdH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus the header timeout (408) and the header size cap (431)."""

    settings: ClassVar[ServerSettings] = ServerSettings()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_timer is not None and self.conn.their_state is h11.IDLE:
            # waiting for a head: h11's buffer holds its start; feed at most the cap, so h11 never overflows
            room = self.settings.max_header_bytes - len(self.conn.trailing_data[0])
            if len(data) > room:
                if room > 0:
                    super().data_received(data[:room])
                if self.transport.is_closing():
                    return
                if self._header_timer is not None:  # no complete head within the cap
                    self._reject(431, f"request line and headers exceed {self.settings.max_header_bytes} bytes "
                                 "(server.max_header_bytes)")
                    return
                data = data[room:]  # the head is complete: the rest is its body or the next request
        super().data_received(data)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request head arrived
            self._cancel_header_timer()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._cancel_header_timer()  # the transport moves to another protocol
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._await_head()  # before super(), whose pipelined handle_events may find the next head
        super().on_response_complete()

    def _await_head(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.settings.header_timeout, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self._reject(408, f"request headers not received within {self.settings.header_timeout:g} s "
                         "(server.header_timeout)")
            return
        log.debug("closing connection from %s: no request within %g s", self.client, self.settings.header_timeout)
        self._close()

    def _reject(self, status: int, message: str) -> None:
        """Answer `status` with Herd's JSON error body and close the connection."""
        log.info("connection from %s: %d %s", self.client[0] if self.client else "-", status, message)
        self._cancel_header_timer()
        body = json.dumps(error_body(status, message)).encode()
        headers = [*self.server_state.default_headers, (b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        try:
            out = self.conn.send(h11.Response(status_code=status, headers=headers, reason=STATUS_PHRASES[status]))
            out = (out or b"") + (self.conn.send(h11.Data(data=body)) or b"")
            self.transport.write(out + (self.conn.send(h11.EndOfMessage()) or b""))
        except h11.LocalProtocolError:  # mid-response: nothing can be answered any more
            pass
        self._close()

    def _close(self) -> None:
        try:
            self.conn.send(h11.ConnectionClosed())
        except h11.LocalProtocolError:
            pass
        self.transport.close()


def protocol_class(settings: ServerSettings) -> type[HerdH11Protocol]:
    """HerdH11Protocol bound to these settings: a class for `uvicorn.Config(http=...)`."""
    return type("HerdH11Protocol", (HerdH11Protocol,), {"settings": settings})
