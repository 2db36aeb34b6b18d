"""The shield registry, config parsing, message normalizing and check_messages (no models needed)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from herd.errors import HerdError
from herd.safety.shields import ShieldConfig, ShieldRegistry, UnknownShieldError, check_messages
from herd.safety.types import ModerationResult, SafetyViolation, ShieldResult, message_text
from herd.tokenizer.messages import to_messages


class Flags:
    """A fake shield: a violation when the last message contains `word`."""

    kind = "fake"

    def __init__(self, word: str, level: str = "error") -> None:
        self.word, self.level, self.calls = word, level, 0

    def run(self, messages: Sequence[Any]) -> ShieldResult:
        self.calls += 1
        text = message_text(to_messages(messages, lenient=True)[-1])
        return ShieldResult(SafetyViolation(self.level, f"no {self.word}", {"violation_type": self.word})
                            if self.word in text else None)

    def moderate(self, texts: Sequence[str]) -> list[ModerationResult]:
        return [ModerationResult(self.word in t, {self.word: self.word in t}, {}, {}) for t in texts]


def test_config_parsing_and_errors() -> None:
    c = ShieldConfig.from_dict({"shield_id": "g", "type": "llama-guard", "model": "/m", "params": {"x": 1}})
    assert c.to_resource() == {"identifier": "g", "provider_resource_id": "/m", "provider_id": "llama-guard",
                               "type": "shield", "params": {"x": 1}}
    for raw, msg in [({"shield_id": "g", "type": "nemo"}, "type must be one of"),
                     ({"shield_id": "g", "type": "llama-guard"}, "needs `model`"),
                     ({"shield_id": "", "type": "code-shield"}, "shield_id"),
                     ({"shield_id": "g", "type": "code-shield", "modle": "x"}, "unknown key"),
                     ({"shield_id": "g", "type": "code-shield", "params": [1]}, "params must be a mapping")]:
        with pytest.raises(HerdError, match=msg):
            ShieldConfig.from_dict(raw, "shields[0]")
    with pytest.raises(HerdError, match="declared twice"):
        ShieldRegistry.from_config([{"shield_id": "a", "type": "code-shield"}] * 2)


def test_registry_defaults_to_code_shield_and_lists_ids_in_unknown_errors() -> None:
    reg = ShieldRegistry.from_config(None)
    assert reg.ids() == ["code-shield"]
    reg = ShieldRegistry.from_config([{"shield_id": "guard", "type": "llama-guard", "model": "/nowhere"}])
    assert reg.ids() == ["guard", "code-shield"]  # declared, not loaded: nothing read yet
    with pytest.raises(UnknownShieldError) as e:
        reg.get("nope")
    assert e.value.available == ["guard", "code-shield"] and "available shields: guard, code-shield" in str(e.value)
    assert ShieldRegistry.from_config([{"shield_id": "cs", "type": "code-shield"}]).ids() == ["cs"]


def test_registry_builds_lazily_once() -> None:
    built = []

    def builder(c: ShieldConfig) -> Flags:
        built.append(c.shield_id)
        return Flags("bomb")

    reg = ShieldRegistry.from_config([{"shield_id": "a", "type": "code-shield"}], builder=builder)
    assert built == []
    reg.run("a", [{"role": "user", "content": "hi"}])
    reg.run("a", [{"role": "user", "content": "hi"}])
    assert built == ["a"]


def test_check_messages_returns_the_first_blocking_violation() -> None:
    warn, a, b = Flags("bomb", level="warn"), Flags("bomb"), Flags("bomb")
    v = check_messages({"warner": warn, "a": a, "b": b}, [{"role": "user", "content": "a bomb"}])
    assert v is not None and v.shield_id == "a" and b.calls == 0 and warn.calls == 1
    assert v.to_dict() == {"shield_id": "a", "violation_level": "error", "user_message": "no bomb",
                           "metadata": {"violation_type": "bomb"}}
    assert check_messages([("a", a)], [{"role": "user", "content": "hello"}]) is None
    reg = ShieldRegistry([ShieldConfig("a", "code-shield")], builder=lambda c: Flags("bomb"))
    with pytest.raises(UnknownShieldError):
        reg.check(["a", "missing"], [{"role": "user", "content": "bomb"}])
    assert reg.check(["a"], [{"role": "user", "content": "bomb"}]).shield_id == "a"


def test_messages_openai_and_llama_stack_shapes() -> None:
    msgs = to_messages([
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "text", "text": "look "}, {"type": "image_url", "image_url": {"url": "x"}}]},
        {"role": "user", "content": {"type": "text", "text": "native item"}, "context": None},
        {"role": "assistant", "content": "", "stop_reason": "end_of_message",
         "tool_calls": [{"call_id": "c", "tool_name": "brave_search", "arguments": {"query": "q"}}]},
        {"role": "tool", "call_id": "c", "content": [{"type": "text", "text": "result"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "d", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
    ], lenient=True)
    assert [m.role for m in msgs] == ["system", "user", "user", "assistant", "tool", "assistant"]
    assert msgs[1].content == "look <image>" and msgs[2].content == "native item"
    assert message_text(msgs[3]) == '{"name": "brave_search", "parameters": {"query": "q"}}'
    assert msgs[4].call_id == "c" and msgs[5].tool_calls[0].arguments == {"a": 1}
    for bad, msg in [([], "must not be empty"), ("hi", "list of messages"), ([{"role": "robot", "content": "x"}],
                     "role must be"), ([{"role": "user", "content": [{"type": "audio"}]}], "unsupported content"),
                     ([3], "must be an object")]:
        with pytest.raises(HerdError, match=msg):
            to_messages(bad, lenient=True)
