"""The terminal side of `herd chat` (plain and with tools): reading the user's messages."""
from __future__ import annotations

import sys

COMMANDS = "/reset clears the conversation, /exit quits"


def read_message(interactive: bool) -> str | None:
    """The next non-empty input line (with a `>>> ` prompt on a terminal), or None at end of input or /exit.
    `/reset` comes back as is, for the caller to clear its conversation."""
    while True:
        if interactive:
            sys.stdout.write(">>> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:  # end of input
            return None
        text = line.strip()
        if text == "/exit":
            return None
        if text:
            return text
