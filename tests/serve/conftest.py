"""Fixtures for the server tests: the tiny tool-calling model and the shared server (SmolLM2 + the tiny
Llama-3-tokenizer model + all-MiniLM-L6-v2, with an API key), started once per session from a YAML config;
tests that need another configuration start their own (helpers: servekit.py)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servekit import API_KEY, ServerProcess, main_config, train_tool_model


@pytest.fixture(scope="session")
def tool_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny tool-calling model in HF layout (no tokenizer files: herd uses Llama 3's for vocab 128256)."""
    return train_tool_model(tmp_path_factory.mktemp("tiny_tools"))


# ---- the main server -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def server_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared server's HERD_HOME."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="session")
def server(tool_model_dir: Path, server_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The shared server: SmolLM2, the tiny tool model and MiniLM, API key API_KEY."""
    cfg = tmp_path_factory.mktemp("cfg") / "server.yaml"
    cfg.write_text(main_config(tool_model_dir))
    home = server_home  # its state (datasets, stores, ...) stays out of the user's home
    srv = ServerProcess("--config", str(cfg), env={"HERD_TEST_API_KEY": API_KEY, "HERD_HOME": str(home)})
    yield srv
    code = srv.stop()
    assert code == 0, srv.output()[-3000:]


@pytest.fixture(scope="session")
def openai_client(server: ServerProcess) -> Any:
    import openai

    return openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def stack_client(server: ServerProcess) -> Any:
    from llama_stack_client import LlamaStackClient

    return LlamaStackClient(base_url=server.url, api_key=API_KEY, max_retries=0, timeout=120,
                            provider_data={"together_api_key": "unused"})


@pytest.fixture(scope="session")
def http(server: ServerProcess) -> Iterator[Any]:
    import httpx

    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as c:
        yield c
