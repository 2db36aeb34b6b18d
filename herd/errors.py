"""Herd's exception types: HerdError (bad input; the CLI prints one line and exits 2) and
EngineError (the engine failed one request; that request ends, the engine goes on)."""
from __future__ import annotations


class HerdError(Exception):
    """A user-facing error: bad input, a missing or malformed file, an unknown name.

    `param` names the input at fault in the caller's terms ("prompt", "max_tokens", "tools",
    "messages[2].content"), so a server can report it without searching the message text."""

    def __init__(self, message: str = "", param: str | None = None):
        super().__init__(message)
        self.param = param


class EngineError(RuntimeError):
    """The engine could not compute one request (an internal failure, not the caller's input)."""
