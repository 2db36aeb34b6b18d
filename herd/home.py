"""Herd's home directory: local state such as pulled models and the server's stored chat completions."""
from __future__ import annotations

import os
from pathlib import Path


def herd_home(create: bool = True) -> Path:
    """`$HERD_HOME` if set, else `~/.cache/herd`; created (with parents) on first use unless `create` is false."""
    home = Path(os.environ.get("HERD_HOME") or "~/.cache/herd").expanduser()
    if create:
        home.mkdir(parents=True, exist_ok=True)
    return home


def models_dir(create: bool = False) -> Path:
    """Where `herd pull` puts models: `<herd_home>/models` (looked up without creating it)."""
    d = herd_home(create) / "models"
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d
