"""Safety shapes: Llama Stack run-shield and shields, OpenAI moderations, and herd's `safety_violation`
extension on chat responses (one violation shape for all of them)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ['ListShieldsResponse', 'ModerationRequest', 'ModerationResponse', 'ModerationResultModel', 'RunShieldRequest', 'RunShieldResponse', 'SafetyViolationOut', 'ShieldResource', 'Violation']


class RunShieldRequest(BaseModel):
    """Llama Stack's run-shield body; messages may be Llama Stack (native) or OpenAI messages."""

    shield_id: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] | None = None  # accepted for compatibility; shields are configured in the server config


class Violation(BaseModel):
    """Llama Stack's SafetyViolation: the level, the message to show the user, the shield's metadata."""

    violation_level: Literal["info", "warn", "error"]
    user_message: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class SafetyViolationOut(Violation):
    """herd extension `safety_violation` on chat responses: which shield stopped a chat turn, and why.

    `stage` is "input" (the model did not run) or "output" (the reply was replaced); `metadata`
    is the shield's (Llama Guard: `violation_type` "S9" and the category names).
    """

    model_config = ConfigDict(extra="allow")

    shield_id: str
    stage: Literal["input", "output"]


class RunShieldResponse(BaseModel):
    violation: Violation | None = None


class ShieldResource(BaseModel):
    """Llama Stack's Shield resource."""

    identifier: str
    provider_resource_id: str | None = None
    provider_id: str
    type: Literal["shield"] = "shield"
    params: dict[str, Any] | None = None


class ListShieldsResponse(BaseModel):
    data: list[ShieldResource]


class ModerationRequest(BaseModel):
    """OpenAI's moderation body; `model` names a shield (default: the first Llama Guard, else the first shield)."""

    input: str | list[str] | list[dict[str, Any]]
    model: str | None = None


class ModerationResultModel(BaseModel):
    flagged: bool
    categories: dict[str, bool] | None = None
    category_applied_input_types: dict[str, list[str]] | None = None
    category_scores: dict[str, float] | None = None
    user_message: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResultModel]
