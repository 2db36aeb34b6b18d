"""Tuned built-in models (herd/hub.py TUNED): a built-in base plus a LoRA adapter shipped inside Herd,
merged at load by every loader (LLM, herd serve, herd train, herd eval all go through hub.load)."""
from __future__ import annotations

import pytest
import torch

from herd import hub
from herd.errors import HerdError
from herd.llm import LLM
from herd.model.lora import LoRAConfig, apply_lora, lora_layers, save_peft_adapter

BASE = "smollm2-135m-instruct"
IDS = [1, 504, 3458, 282, 4649, 314]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A rank-2 adapter of the embedded model with random (non-zero) B matrices, in PEFT format."""
    model, _ = hub.load(BASE, dtype=torch.float32)
    config = LoRAConfig(rank=2, alpha=4, targets=("q", "v", "down"))
    apply_lora(model, config)
    g = torch.Generator().manual_seed(0)
    for layer in lora_layers(model).values():
        layer.lora_B.data = torch.randn(layer.lora_B.shape, generator=g) * 0.02
    return save_peft_adapter(model, config, tmp_path_factory.mktemp("tuned") / "adapter", BASE)


def logits(llm: LLM) -> torch.Tensor:
    with torch.no_grad():
        return llm.model(torch.tensor([IDS]))[0, -1].float()


def test_a_tuned_builtin_is_its_base_with_its_adapter_merged(adapter, monkeypatch):
    monkeypatch.setitem(hub.TUNED, "tiny-tools", hub.Tuned("test", BASE, str(adapter)))  # an absolute adapter dir
    ref = hub.resolve("tiny-tools")
    assert ref.layout == "gguf" and ref.path == hub.builtin_path(BASE) and ref.lora == adapter
    tuned, merged, base = logits(LLM("tiny-tools")), logits(LLM(BASE, lora=adapter)), logits(LLM(BASE))
    assert torch.equal(tuned, merged)  # the same weights as merging the adapter by hand
    assert (tuned - base).abs().max() > 1e-3  # and not the base's


def test_a_tuned_builtin_without_its_adapter_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(hub.TUNED, "tiny-tools", hub.Tuned("test", BASE, str(tmp_path / "missing")))
    with pytest.raises(HerdError, match="tiny-tools: its adapter is not in this installation"):
        hub.resolve("tiny-tools")
    assert "smollm2-135m-tools" in hub.BUILTIN_MODELS
