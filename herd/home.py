"""Herd's home directory: local state such as pulled models, and the SQLite files that keep what must
survive a restart (stored chat completions, responses, agents, tool groups)."""
from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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


class StateFile:
    """One SQLite file of state under Herd's home (stored completions, responses, agents, tool groups).

    Opened on first use, so a process that never stores anything leaves no file; created private (0600:
    it holds conversations); WAL; foreign keys on. Blocking and thread-safe (one lock around the one
    connection): async code calls its users through `asyncio.to_thread`.

        with state.read() as db:    # None while the file does not exist
        with state.write() as db:   # one transaction: committed whole or rolled back
    """

    def __init__(self, filename: str, schema: str, path: str | Path | None = None) -> None:
        self.filename, self.schema = filename, schema
        self._path = Path(path) if path is not None else None  # None: <herd_home>/<filename>
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    @property
    def path(self) -> Path:
        return self._path or herd_home(create=False) / self.filename

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if self._db is None:
            path = self.path
            if not path.exists():
                if not create:
                    return None
                path.parent.mkdir(parents=True, exist_ok=True)
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            db = sqlite3.connect(path, timeout=30, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(self.schema)
            self._db = db
        return self._db

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection | None]:
        with self._lock:
            yield self._connect(create=False)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._connect(create=True)
            assert db is not None
            with db:
                yield db

    def close(self) -> None:
        """Close the file (it reopens on next use)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
