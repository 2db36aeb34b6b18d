"""Fixtures for the safety tests: tiny Llama-Guard-shaped checkpoints (Meta and HF layout)."""
from __future__ import annotations

from pathlib import Path

import guardkit
import pytest
import torch
from guardkit import TEMPLATE_8B, TINY_GUARD, save_meta_guard, write_hf_tokenizer

from herd.model.weights import save_hf
from herd.tokenizer.tokenizer import (
    LLAMA3_SPECIAL_NAMES,
    Llama3Tokenizer,
    default_llama3_tokenizer_path,
)


@pytest.fixture(scope="session")
def llama3() -> Llama3Tokenizer:
    return Llama3Tokenizer.default()


@pytest.fixture(scope="session")
def tiny_guard_model() -> torch.nn.Module:
    return guardkit.tiny_guard_model(seed=3)


@pytest.fixture(scope="session")
def guard_meta_dir(tmp_path_factory: pytest.TempPathFactory, tiny_guard_model: torch.nn.Module) -> Path:
    """Meta layout (params.json, consolidated.00.pth, tokenizer.model): no chat template."""
    return save_meta_guard(tiny_guard_model, tmp_path_factory.mktemp("guard_meta"))


@pytest.fixture(scope="session")
def llama3_tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama 3 tokenizer.json made by transformers' converter from Meta's tiktoken ranks."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(str(default_llama3_tokenizer_path()),
                            extra_special_tokens=list(LLAMA3_SPECIAL_NAMES)).converted()
    path = tmp_path_factory.mktemp("l3tok") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="session")
def guard_hf_dir(tmp_path_factory: pytest.TempPathFactory, tiny_guard_model: torch.nn.Module,
                 llama3_tokenizer_json: Path) -> Path:
    """HF layout with the Llama-Guard-3-8B chat template."""
    d = tmp_path_factory.mktemp("guard_hf")
    save_hf(tiny_guard_model, TINY_GUARD, d)
    return write_hf_tokenizer(d, llama3_tokenizer_json, TEMPLATE_8B)
