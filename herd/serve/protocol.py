"""HTTP shapes: OpenAI-compatible and Llama Stack (0.2.x classic) requests and responses.

Requests are strict (a string where a number belongs is a 400, never coerced) and ignore
unknown fields, so newer or older clients that add fields keep working. Responses are built
from these models so that every shape lives in this one file.
"""
from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

ToolPromptFormat = Literal["json", "function_tag", "python_list"]
StopReason = Literal["end_of_turn", "end_of_message", "out_of_tokens"]
MAX_TOP_K = 1 << 20  # more than any vocabulary; bounds what reaches the sampler
# OpenAI's `metadata`: up to 16 pairs, keys up to 64 characters, values up to 512
Metadata = dict[Annotated[str, StringConstraints(max_length=64)], Annotated[str, StringConstraints(max_length=512)]]


def _whole_number(value: Any) -> Any:
    """16.0 is an integer in JSON (schema); strict mode would refuse it (bools stay refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_whole_number)]  # request integers


class _Request(BaseModel):
    # NaN/Infinity (which Python's json accepts) would poison a whole engine batch: rejected here
    model_config = ConfigDict(strict=True, extra="ignore", protected_namespaces=(), allow_inf_nan=False)


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


def new_id(prefix: str) -> str:
    """An OpenAI-style object id, e.g. chatcmpl-<hex>."""
    return f"{prefix}-{uuid.uuid4().hex}"


# ---- OpenAI requests ------------------------------------------------------------------------


class ContentPart(_Request):
    """A content part: {"type": "text", "text"}; image/audio/file parts are rejected later with a clear 400."""

    type: str
    text: str | None = None


class FunctionCallIn(_Request):
    name: str = Field(min_length=1)
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(_Request):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(_Request):
    """One OpenAI chat message (`developer` is a system message; `ipython` is accepted as `tool`)."""

    role: Literal["system", "developer", "user", "assistant", "tool", "ipython"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Request):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(_Request):
    """{"type": "function", "function": {...}} or a Llama built-in: {"type": "brave_search"} etc."""

    type: Literal["function", "brave_search", "wolfram_alpha", "code_interpreter"] = "function"
    function: FunctionDef | None = None


class NamedFunction(_Request):
    name: str = Field(min_length=1)


class NamedToolChoice(_Request):
    type: Literal["function"] = "function"
    function: NamedFunction


class StreamOptions(_Request):
    include_usage: bool | None = False


class SamplingFields(_Request):
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


class EmbeddingRequest(_Request):
    """POST /v1/embeddings."""

    model: str | None = None
    input: str | list[str] | list[Int] | list[list[Int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Int | None = Field(None, ge=1)
    user: str | None = None


# ---- OpenAI responses -----------------------------------------------------------------------


class SafetyViolationOut(_Response):
    """herd extension `safety_violation`: which shield stopped a chat turn, and why.

    `stage` is "input" (the model did not run) or "output" (the reply was replaced); `metadata`
    is the shield's (Llama Guard: `violation_type` "S9" and the category names).
    """

    shield_id: str
    stage: Literal["input", "output"]
    violation_level: Literal["info", "warn", "error"]
    user_message: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None


class FunctionCallOut(_Response):
    name: str
    arguments: str


class ToolCallOut(_Response):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ChatMessageOut(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(_Response):
    content: list[TokenLogprob] | None


class ChatChoice(_Response):
    index: int
    message: ChatMessageOut
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None
    safety_violation: SafetyViolationOut | None = None  # left out when None


class ChatCompletion(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    safety_violation: SafetyViolationOut | None = None  # the first choice's; left out when None


class ToolCallDeltaFunction(_Response):
    name: str | None = None
    arguments: str | None = None


class ToolCallDeltaOut(_Response):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolCallDeltaFunction


class ChatDelta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDeltaOut] | None = None


class ChatChunkChoice(_Response):
    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None
    safety_violation: SafetyViolationOut | None = None  # on a refused choice's finish chunk; else left out


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    safety_violation: SafetyViolationOut | None = None  # as the choice's; left out when None


class CompletionLogprobs(_Response):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(_Response):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class Completion(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class EmbeddingData(_Response):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingList(_Response):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class ModelCard(_Response):
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


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class CursorPage(_Response):
    """A page of stored chat completions (each with `input_messages`) or of one's messages: OpenAI's
    ChatCompletionList and Llama Stack 0.2's ListOpenAIChatCompletionResponse (ids "" when empty)."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str
    last_id: str
    has_more: bool


class ChatCompletionDeleted(_Response):
    id: str
    object: Literal["chat.completion.deleted"] = "chat.completion.deleted"
    deleted: bool = True


# ---- Llama Stack (0.2.x native) requests ----------------------------------------------------


class StackToolCall(_Request):
    call_id: str = ""
    tool_name: str = Field(min_length=1)
    arguments: dict[str, Any] | str = Field(default_factory=dict)
    arguments_json: str | None = None


class StackMessage(_Request):
    """A native message: user {content, context}, system, tool {call_id}, assistant {tool_calls}."""

    role: Literal["user", "system", "assistant", "tool", "ipython"]
    content: Any = ""
    context: Any = None
    call_id: str | None = None
    tool_name: str | None = None
    stop_reason: StopReason | None = None
    tool_calls: list[StackToolCall] | None = None


class StackStrategy(_Request):
    type: Literal["greedy", "top_p", "top_k"] = "greedy"
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: Int | None = Field(None, ge=1, le=MAX_TOP_K)


class StackSamplingParams(_Request):
    strategy: StackStrategy = Field(default_factory=StackStrategy)
    max_tokens: Int | None = Field(0, ge=0)  # 0: up to the context
    repetition_penalty: float | None = Field(1.0, gt=0, le=100)
    stop: list[str] | None = None


class StackToolParam(_Request):
    param_type: str = "string"
    description: str | None = None
    required: bool | None = True
    default: Any = None


class StackTool(_Request):
    tool_name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, StackToolParam] | None = None
    input_schema: dict[str, Any] | None = None  # newer clients send a JSON schema


class StackToolConfig(_Request):
    tool_choice: str | None = "auto"
    tool_prompt_format: ToolPromptFormat | None = None
    system_message_behavior: Literal["append", "replace"] | None = "append"


class StackLogprobs(_Request):
    top_k: Int = Field(0, ge=0, le=20)


class StackChatRequest(_Request):
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


class StackCompletionRequest(_Request):
    """POST /v1/inference/completion."""

    model_id: str = Field(min_length=1)
    content: Any
    sampling_params: StackSamplingParams | None = None
    response_format: dict[str, Any] | None = None
    stream: bool | None = False
    logprobs: StackLogprobs | None = None


class RegisterModelRequest(_Request):
    """POST /v1/models (Llama Stack models.register): herd serves the models named at startup."""

    model_id: str = Field(min_length=1)
    provider_model_id: str | None = None
    provider_id: str | None = None
    metadata: dict[str, Any] | None = None
    model_type: Literal["llm", "embedding"] | None = None


class StackEmbeddingsRequest(_Request):
    """POST /v1/inference/embeddings."""

    model_id: str = Field(min_length=1)
    contents: list[Any] = Field(min_length=1)
    text_truncation: Literal["none", "start", "end"] | None = None
    output_dimension: Int | None = Field(None, ge=1)
    task_type: Literal["query", "document"] | None = None


# ---- Llama Stack responses ------------------------------------------------------------------


class StackToolCallOut(_Response):
    call_id: str
    tool_name: str
    arguments: dict[str, Any]
    arguments_json: str


class CompletionMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str
    stop_reason: StopReason
    tool_calls: list[StackToolCallOut] = Field(default_factory=list)


class Metric(_Response):
    metric: str
    value: float
    unit: str | None = None


class TokenLogProbs(_Response):
    logprobs_by_token: dict[str, float]


class StackChatResponse(_Response):
    completion_message: CompletionMessage
    logprobs: list[TokenLogProbs] | None = None
    metrics: list[Metric] | None = None
    safety_violation: SafetyViolationOut | None = None  # herd extension; left out when None


class StackDelta(_Response):
    """{"type": "text", "text"} or {"type": "tool_call", "tool_call": str | ToolCall, "parse_status"}."""

    type: Literal["text", "tool_call"]
    text: str | None = None
    tool_call: StackToolCallOut | str | None = None
    parse_status: Literal["started", "in_progress", "failed", "succeeded"] | None = None


class StackEvent(_Response):
    event_type: Literal["start", "progress", "complete"]
    delta: StackDelta
    stop_reason: StopReason | None = None
    logprobs: list[TokenLogProbs] | None = None


class StackChatChunk(_Response):
    event: StackEvent
    metrics: list[Metric] | None = None
    safety_violation: SafetyViolationOut | None = None  # on the `complete` event of a refused turn


class StackCompletionResponse(_Response):
    """Non-stream response, and (with `delta` = `content`) each stream chunk."""

    content: str
    delta: str | None = None
    stop_reason: StopReason | None = None
    logprobs: list[TokenLogProbs] | None = None
    metrics: list[Metric] | None = None


class StackEmbeddingsResponse(_Response):
    embeddings: list[list[float]]


def usage_metrics(prompt_tokens: int, completion_tokens: int) -> list[Metric]:
    """Llama Stack's token-count metrics."""
    return [Metric(metric="prompt_tokens", value=prompt_tokens),
            Metric(metric="completion_tokens", value=completion_tokens),
            Metric(metric="total_tokens", value=prompt_tokens + completion_tokens)]


_EXTENSIONS = ("safety_violation",)  # herd extension fields: present only when set


def _drop_unset_extensions(out: dict[str, Any]) -> dict[str, Any]:
    for obj in (out, *out.get("choices", ())):
        if isinstance(obj, dict):
            for key in _EXTENSIONS:
                if key in obj and obj[key] is None:
                    del obj[key]
    return out


def dump(model: BaseModel, *, exclude_none: bool = False) -> dict[str, Any]:
    """A response model as a JSON-ready dict (unset herd extension fields left out)."""
    return _drop_unset_extensions(model.model_dump(mode="json", exclude_none=exclude_none))


def dump_chunk(chunk: BaseModel) -> dict[str, Any]:
    """A stream chunk with OpenAI's layout: absent delta fields left out, top-level nulls kept."""
    out = _drop_unset_extensions(chunk.model_dump(mode="json"))
    for choice in out.get("choices", []):
        delta = choice.get("delta")
        if isinstance(delta, dict):
            delta = {k: v for k, v in delta.items() if v is not None}
            for call in delta.get("tool_calls", []):
                for key in [k for k, v in call.items() if v is None]:
                    del call[key]
                call["function"] = {k: v for k, v in call["function"].items() if v is not None}
            choice["delta"] = delta
    return out
