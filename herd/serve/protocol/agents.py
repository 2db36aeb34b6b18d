"""Llama Stack 0.2 agents API request bodies (the responses are the Stack's Turn / Session / Step objects
that herd.agents builds as dicts)."""
from __future__ import annotations

from typing import Any

from herd.serve.protocol.common import RequestModel

__all__ = ["CreateAgentRequest", "CreateSessionRequest", "CreateTurnRequest", "ResumeTurnRequest"]


class CreateAgentRequest(RequestModel):
    agent_config: dict[str, Any]


class CreateSessionRequest(RequestModel):
    session_name: str = ""


class CreateTurnRequest(RequestModel):
    messages: list[Any]
    stream: bool = False  # herd answers both; Llama Stack's meta-reference only streams (501 otherwise)
    documents: list[Any] | None = None
    toolgroups: list[Any] | None = None
    tool_config: dict[str, Any] | None = None


class ResumeTurnRequest(RequestModel):
    tool_responses: list[Any]
    stream: bool = False
