"""The `rag:` section of the server config (light: the config reads it without loading torch)."""
from __future__ import annotations

from dataclasses import dataclass

from herd.errors import HerdError

MAX_FILE_BYTES = 64 * 1024 * 1024  # default upload limit


@dataclass(frozen=True)
class RagSettings:
    """The `rag:` section of the server config."""

    enabled: bool = True
    path: str | None = None  # directory of rag.sqlite and the uploaded files; None: <herd_home>/rag
    embedding_model: str | None = None  # id of a served embedding model; None: the first one
    max_file_bytes: int = MAX_FILE_BYTES  # larger uploads get 413
    workers: int = 1  # files embedded at once in the background

    def __post_init__(self) -> None:
        if self.max_file_bytes < 1 or not 1 <= self.workers <= 16:
            raise HerdError("rag.max_file_bytes must be >= 1 and rag.workers in 1..16")
