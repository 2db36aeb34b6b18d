"""The one way the stack (agents, tools, RAG, eval, SDG) reaches a chat model: the `Generator` protocol.

A Generator takes a `ChatRequest` (herd `Message`s, offered tools, tool_choice, sampling) and streams
`ChatDelta`s: text as it is generated, tool calls as they are recognised, and a last delta with
`done=True` carrying the whole assistant `Message` (content, tool_calls, stop_reason) and the usage.

Implementations: the server's in-process one over the async engine (`herd.serve.generator`, also what
`herd chat --tools` uses), and `OpenAIGenerator` for any OpenAI-compatible URL (`herd.generator_http`).
Callers that want the whole reply use `complete(gen, request)`.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from herd.tokenizer.messages import Message, ToolCall, ToolDefinition


@dataclass
class ChatRequest:
    """One chat turn to generate. `tool_choice`: "auto" | "none" | "required" | a tool name."""

    messages: list[Message]
    tools: list[ToolDefinition] = field(default_factory=list)
    tool_choice: str = "auto"
    tool_prompt_format: str | None = None  # Llama 3.x custom tools: "json" | "function_tag" | "python_list"
    response_format: dict[str, Any] | None = None  # OpenAI shape: {"type": "json_schema", "json_schema": {...}}
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    parallel_tool_calls: bool = True  # False: at most one call per reply


@dataclass
class ChatDelta:
    """A piece of a streamed reply; the last one has done=True and the whole `message`."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    done: bool = False
    message: Message | None = None  # on the last delta
    finish_reason: str | None = None  # stop / length / tool_calls / content_filter
    prompt_tokens: int = 0
    completion_tokens: int = 0


@runtime_checkable
class Generator(Protocol):
    """A chat model the stack can call."""

    model_id: str
    # optional: "llama3" when the model speaks the Llama 3.1 format (built-in tools, <|python_tag|>);
    # read with getattr(gen, "prompt_format", None)

    def chat(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """Stream the reply to `request`; the last delta is done=True."""


@dataclass
class ChatResult:
    """A whole reply: the assistant message, why it ended, and token counts."""

    message: Message
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


async def complete(gen: Generator, request: ChatRequest) -> ChatResult:
    """Run `request` to the end and return the whole reply."""
    last: ChatDelta | None = None
    async for d in gen.chat(request):
        last = d
    if last is None or not last.done or last.message is None:
        raise RuntimeError(f"generator {gen.model_id!r} ended without a final message")
    return ChatResult(last.message, last.finish_reason or "stop", last.prompt_tokens, last.completion_tokens)
