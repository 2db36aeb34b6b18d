"""Llama Stack (0.2.x classic) native requests and responses: inference, models."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from herd.serve.protocol.common import (
    MAX_TOP_K,
    Int,
    RequestModel,
    ResponseModel,
    StopReason,
    ToolPromptFormat,
)
from herd.serve.protocol.safety import SafetyViolationOut

__all__ = ['CompletionMessage', 'Metric', 'RegisterModelRequest', 'StackChatChunk', 'StackChatRequest', 'StackChatResponse', 'StackCompletionRequest', 'StackCompletionResponse', 'StackDelta', 'StackEmbeddingsRequest', 'StackEmbeddingsResponse', 'StackEvent', 'StackLogprobs', 'StackMessage', 'StackSamplingParams', 'StackStrategy', 'StackTool', 'StackToolCall', 'StackToolCallOut', 'StackToolConfig', 'StackToolParam', 'TokenLogProbs', 'usage_metrics']


# ---- Llama Stack (0.2.x native) requests ----------------------------------------------------


class StackToolCall(RequestModel):
    call_id: str = ""
    tool_name: str = Field(min_length=1)
    arguments: dict[str, Any] | str = Field(default_factory=dict)
    arguments_json: str | None = None


class StackMessage(RequestModel):
    """A native message: user {content, context}, system, tool {call_id}, assistant {tool_calls}."""

    role: Literal["user", "system", "assistant", "tool", "ipython"]
    content: Any = ""
    context: Any = None
    call_id: str | None = None
    tool_name: str | None = None
    stop_reason: StopReason | None = None
    tool_calls: list[StackToolCall] | None = None


class StackStrategy(RequestModel):
    type: Literal["greedy", "top_p", "top_k"] = "greedy"
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: Int | None = Field(None, ge=1, le=MAX_TOP_K)


class StackSamplingParams(RequestModel):
    strategy: StackStrategy = Field(default_factory=StackStrategy)
    max_tokens: Int | None = Field(0, ge=0)  # 0: up to the context
    repetition_penalty: float | None = Field(1.0, gt=0, le=100)
    stop: list[str] | None = None


class StackToolParam(RequestModel):
    param_type: str = "string"
    description: str | None = None
    required: bool | None = True
    default: Any = None


class StackTool(RequestModel):
    tool_name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, StackToolParam] | None = None
    input_schema: dict[str, Any] | None = None  # newer clients send a JSON schema


class StackToolConfig(RequestModel):
    tool_choice: str | None = "auto"
    tool_prompt_format: ToolPromptFormat | None = None
    system_message_behavior: Literal["append", "replace"] | None = "append"


class StackLogprobs(RequestModel):
    top_k: Int = Field(0, ge=0, le=20)


class StackChatRequest(RequestModel):
    """POST /v1/inference/chat-completion."""

    model_id: str = Field(min_length=1)
    messages: list[StackMessage] = Field(min_length=1)
    sampling_params: StackSamplingParams | None = None
    tools: list[StackTool] | None = None
    tool_choice: str | None = None
    tool_prompt_format: ToolPromptFormat | None = None
    tool_config: StackToolConfig | None = None
    response_format: dict[str, Any] | None = None
    stream: bool | None = False
    logprobs: StackLogprobs | None = None
    input_shields: list[str] | None = None  # herd extension, as on ChatCompletionRequest
    output_shields: list[str] | None = None


class StackCompletionRequest(RequestModel):
    """POST /v1/inference/completion."""

    model_id: str = Field(min_length=1)
    content: Any
    sampling_params: StackSamplingParams | None = None
    response_format: dict[str, Any] | None = None
    stream: bool | None = False
    logprobs: StackLogprobs | None = None


class RegisterModelRequest(RequestModel):
    """POST /v1/models (Llama Stack models.register): herd serves the models named at startup."""

    model_id: str = Field(min_length=1)
    provider_model_id: str | None = None
    provider_id: str | None = None
    metadata: dict[str, Any] | None = None
    model_type: Literal["llm", "embedding"] | None = None


class StackEmbeddingsRequest(RequestModel):
    """POST /v1/inference/embeddings."""

    model_id: str = Field(min_length=1)
    contents: list[Any] = Field(min_length=1)
    text_truncation: Literal["none", "start", "end"] | None = None
    output_dimension: Int | None = Field(None, ge=1)
    task_type: Literal["query", "document"] | None = None


# ---- Llama Stack responses ------------------------------------------------------------------


class StackToolCallOut(ResponseModel):
    call_id: str
    tool_name: str
    arguments: dict[str, Any]
    arguments_json: str


class CompletionMessage(ResponseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    stop_reason: StopReason
    tool_calls: list[StackToolCallOut] = Field(default_factory=list)


class Metric(ResponseModel):
    metric: str
    value: float
    unit: str | None = None


class TokenLogProbs(ResponseModel):
    logprobs_by_token: dict[str, float]


class StackChatResponse(ResponseModel):
    completion_message: CompletionMessage
    logprobs: list[TokenLogProbs] | None = None
    metrics: list[Metric] | None = None
    safety_violation: SafetyViolationOut | None = None  # herd extension; left out when None


class StackDelta(ResponseModel):
    """{"type": "text", "text"} or {"type": "tool_call", "tool_call": str | ToolCall, "parse_status"}."""

    type: Literal["text", "tool_call"]
    text: str | None = None
    tool_call: StackToolCallOut | str | None = None
    parse_status: Literal["started", "in_progress", "failed", "succeeded"] | None = None


class StackEvent(ResponseModel):
    event_type: Literal["start", "progress", "complete"]
    delta: StackDelta
    stop_reason: StopReason | None = None
    logprobs: list[TokenLogProbs] | None = None


class StackChatChunk(ResponseModel):
    event: StackEvent
    metrics: list[Metric] | None = None
    safety_violation: SafetyViolationOut | None = None  # on the `complete` event of a refused turn


class StackCompletionResponse(ResponseModel):
    """Non-stream response, and (with `delta` = `content`) each stream chunk."""

    content: str
    delta: str | None = None
    stop_reason: StopReason | None = None
    logprobs: list[TokenLogProbs] | None = None
    metrics: list[Metric] | None = None


class StackEmbeddingsResponse(ResponseModel):
    embeddings: list[list[float]]


def usage_metrics(prompt_tokens: int, completion_tokens: int) -> list[Metric]:
    """Llama Stack's token-count metrics."""
    return [Metric(metric="prompt_tokens", value=prompt_tokens),
            Metric(metric="completion_tokens", value=completion_tokens),
            Metric(metric="total_tokens", value=prompt_tokens + completion_tokens)]
