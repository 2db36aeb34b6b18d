"""OpenAI-compatible requests and responses (chat, completions, embeddings, models, stored completions)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from herd.serve.protocol.common import (
    MAX_TOP_K,
    Int,
    Metadata,
    RequestModel,
    ResponseModel,
    ToolPromptFormat,
)
from herd.serve.protocol.safety import SafetyViolationOut

__all__ = ['ChatChoice', 'ChatChunkChoice', 'ChatCompletion', 'ChatCompletionChunk', 'ChatCompletionDeleted', 'ChatCompletionRequest', 'ChatDelta', 'ChatMessageIn', 'ChatMessageOut', 'ChoiceLogprobs', 'Completion', 'CompletionChoice', 'CompletionLogprobs', 'CompletionRequest', 'ContentPart', 'CursorPage', 'EmbeddingData', 'EmbeddingList', 'EmbeddingRequest', 'FunctionCallIn', 'FunctionCallOut', 'FunctionDef', 'ModelCard', 'ModelList', 'NamedFunction', 'NamedToolChoice', 'SamplingFields', 'StreamOptions', 'TokenLogprob', 'ToolCallDeltaFunction', 'ToolCallDeltaOut', 'ToolCallIn', 'ToolCallOut', 'ToolIn', 'TopLogprob', 'Usage']


# ---- OpenAI requests ------------------------------------------------------------------------


class ContentPart(RequestModel):
    """A content part: {"type": "text", "text"}; image/audio/file parts are rejected later with a clear 400."""

    type: str
    text: str | None = None


class FunctionCallIn(RequestModel):
    name: str = Field(min_length=1)
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(RequestModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(RequestModel):
    """One OpenAI chat message (`developer` is a system message; `ipython` is accepted as `tool`)."""

    role: Literal["system", "developer", "user", "assistant", "tool", "ipython"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionDef(RequestModel):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(RequestModel):
    """{"type": "function", "function": {...}} or a Llama built-in: {"type": "brave_search"} etc."""

    type: Literal["function", "brave_search", "wolfram_alpha", "code_interpreter"] = "function"
    function: FunctionDef | None = None


class NamedFunction(RequestModel):
    name: str = Field(min_length=1)


class NamedToolChoice(RequestModel):
    type: Literal["function"] = "function"
    function: NamedFunction


class StreamOptions(RequestModel):
    include_usage: bool | None = False


class SamplingFields(RequestModel):
    """Sampling fields shared by chat and completions (vLLM-style extensions included)."""

    model: str = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: Int | None = Field(None, ge=-1, le=MAX_TOP_K)
    min_p: float | None = Field(None, ge=0, le=1)
    max_tokens: Int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: Int | None = Field(None, ge=-(2**63), le=2**63 - 1 - 16)  # seed + i for the n-th choice
    n: Int = Field(1, ge=1, le=16)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=100)
    logit_bias: dict[str, float] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None
    ignore_eos: bool | None = False


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessageIn] = Field(min_length=1)
    tools: list[ToolIn] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_completion_tokens: Int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: Int | None = Field(None, ge=0, le=20)
    tool_prompt_format: ToolPromptFormat | None = None  # herd extension (Llama 3.x custom-tool format)
    input_shields: list[str] | None = None  # herd extension: shield ids, added to the model's configured ones
    output_shields: list[str] | None = None  # herd extension: the reply is checked before it is released
    store: bool | None = None  # keep the completion for GET /v1/chat/completions (server setting decides default)
    metadata: Metadata | None = Field(None, max_length=16)  # stored with the completion; a list filter


class CompletionRequest(SamplingFields):
    """POST /v1/completions."""

    prompt: str | list[str] | list[Int] | list[list[Int]]
    echo: bool | None = False
    logprobs: Int | None = Field(None, ge=0, le=20)
    suffix: str | None = None
    best_of: Int | None = Field(None, ge=1)


class EmbeddingRequest(RequestModel):
    """POST /v1/embeddings."""

    model: str | None = None
    input: str | list[str] | list[Int] | list[list[Int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Int | None = Field(None, ge=1)
    user: str | None = None


# ---- OpenAI responses -----------------------------------------------------------------------


class Usage(ResponseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None


class FunctionCallOut(ResponseModel):
    name: str
    arguments: str


class ToolCallOut(ResponseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ChatMessageOut(ResponseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class TopLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(ResponseModel):
    content: list[TokenLogprob] | None


class ChatChoice(ResponseModel):
    index: int
    message: ChatMessageOut
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None
    safety_violation: SafetyViolationOut | None = None  # left out when None


class ChatCompletion(ResponseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    safety_violation: SafetyViolationOut | None = None  # the first choice's; left out when None


class ToolCallDeltaFunction(ResponseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDeltaOut(ResponseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolCallDeltaFunction


class ChatDelta(ResponseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDeltaOut] | None = None


class ChatChunkChoice(ResponseModel):
    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None
    safety_violation: SafetyViolationOut | None = None  # on a refused choice's finish chunk; else left out


class ChatCompletionChunk(ResponseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    safety_violation: SafetyViolationOut | None = None  # as the choice's; left out when None


class CompletionLogprobs(ResponseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(ResponseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class Completion(ResponseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class EmbeddingData(ResponseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class ModelCard(ResponseModel):
    """One model, in both shapes: OpenAI (id/object/created/owned_by) and Llama Stack (identifier/...)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "herd"
    identifier: str
    provider_id: str = "herd"
    provider_resource_id: str
    type: Literal["model"] = "model"
    model_type: Literal["llm", "embedding"]
    metadata: dict[str, Any] = Field(default_factory=dict)


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class CursorPage(ResponseModel):
    """A page of stored chat completions (each with `input_messages`) or of one's messages: OpenAI's
    ChatCompletionList and Llama Stack 0.2's ListOpenAIChatCompletionResponse (ids "" when empty)."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str
    last_id: str
    has_more: bool


class ChatCompletionDeleted(ResponseModel):
    id: str
    object: Literal["chat.completion.deleted"] = "chat.completion.deleted"
    deleted: bool = True
