"""Herd's home directory: local state such as the server's stored chat completions."""
from __future__ import annotations

import os
from pathlib import Path


def herd_home() -> Path:
    """`$HERD_HOME` if set, else `~/.cache/herd`; created (with parents) on first use."""
    home = Path(os.environ.get("HERD_HOME") or "~/.cache/herd").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home
