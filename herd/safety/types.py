"""What shields share, with no shield behind it: results in Llama Stack's and OpenAI's shapes, the
`Shield` protocol, and the text a guard reads from a message. The guards and the registry both import
this module; the registry loads the guards lazily (they pull in torch), never the other way round."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from herd.tokenizer.messages import Message, ToolCall

ViolationLevel = Literal["info", "warn", "error"]
MessageLike = Message | Mapping[str, Any]


@dataclass
class SafetyViolation:
    """Llama Stack's SafetyViolation: level, the message to show the user, and metadata (codes, scores)."""

    violation_level: ViolationLevel
    user_message: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object Llama Stack returns."""
        return {"violation_level": self.violation_level, "user_message": self.user_message,
                "metadata": dict(self.metadata)}


@dataclass
class ShieldResult:
    """Llama Stack's RunShieldResponse: `violation` is None when the content passed."""

    violation: SafetyViolation | None = None

    def to_dict(self) -> dict[str, Any]:
        """`{"violation": null | {...}}` exactly as `POST /v1/safety/run-shield` returns it."""
        return {"violation": None if self.violation is None else self.violation.to_dict()}


@dataclass
class ModerationResult:
    """One OpenAI moderation result (per input text), with Llama Stack's user_message/metadata extras."""

    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]
    user_message: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of `results[i]` in `POST /v1/moderations`."""
        return {"flagged": self.flagged, "categories": dict(self.categories),
                "category_scores": dict(self.category_scores),
                "category_applied_input_types": {k: list(v) for k, v in self.category_applied_input_types.items()},
                "user_message": self.user_message, "metadata": dict(self.metadata)}


@runtime_checkable
class Shield(Protocol):
    """What every shield offers: screen a conversation, or moderate plain texts."""

    kind: str  # "llama-guard" | "prompt-guard" | "code-shield"

    def run(self, messages: Sequence[MessageLike]) -> ShieldResult:
        """Screen a conversation (OpenAI, Llama Stack or herd messages)."""
        ...

    def moderate(self, texts: Sequence[str]) -> list[ModerationResult]:
        """One OpenAI moderation result per text."""
        ...


# ---- the text a guard reads (messages come from herd.tokenizer.messages.to_messages(lenient=True))


def tool_call_text(call: ToolCall) -> str:
    """A tool call as the text a guard reads: the code of a code_interpreter call, else JSON."""
    code = call.arguments.get("code")
    if call.tool_name == "code_interpreter" and isinstance(code, str):
        return code
    return json.dumps({"name": call.tool_name, "parameters": call.arguments}, ensure_ascii=False)


def message_text(message: Message) -> str:
    """Everything a message says: its content, then its tool calls (one per line)."""
    parts = [message.content] if message.content else []
    parts += [tool_call_text(c) for c in message.tool_calls]
    return "\n".join(parts)
