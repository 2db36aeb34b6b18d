"""Fixtures for the retrieval tests: the embedded all-MiniLM-L6-v2, loaded once."""
from __future__ import annotations

import pytest

from herd.rag.embed import Embedder


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder.load()
