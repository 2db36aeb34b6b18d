"""OpenAI Responses API shapes: the `POST /v1/responses` request (input items, tools, tool_choice, text
format) and what comes back (the response object, its output items, the stream's events, item pages).

Input items and tools are unions told apart by `type` (an input message may leave it out); their tags
start with a capital so that a 400 names the field as the client wrote it (`input[2].call_id`). The
response side is lenient (extra fields kept) and mirrors the `openai` package's `openai.types.responses`.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Discriminator, Field, Tag

from herd.agents.config import MAX_INFER_ITERS
from herd.serve.protocol.common import Int, Metadata, RequestModel, ResponseModel

__all__ = [
    "WEB_SEARCH_TYPES",
    "FileSearchCallInput",
    "FileSearchToolIn",
    "FunctionCallInput",
    "FunctionCallOutputInput",
    "FunctionToolIn",
    "HostedToolChoice",
    "InputContentPart",
    "InputMessage",
    "McpCallInput",
    "McpListToolsInput",
    "McpToolChoice",
    "McpToolFilter",
    "McpToolIn",
    "NamedFunctionChoice",
    "ResponseCreateRequest",
    "ResponseDeleted",
    "ResponseError",
    "ResponseIncomplete",
    "ResponseItemPage",
    "ResponseObject",
    "ResponseUsage",
    "TextConfig",
    "TextFormat",
    "WebSearchCallInput",
    "WebSearchToolIn",
]

WEB_SEARCH_TYPES = ("web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11")


# ---- input items -----------------------------------------------------------------------------


class InputContentPart(RequestModel):
    """A content part: input_text / output_text (a previous answer) / text; other types are refused later
    with a 400 naming the part."""

    type: str
    text: str | None = None


class InputMessage(RequestModel):
    """`{"role", "content"}` (EasyInputMessage) or a `{"type": "message", ...}` item of a previous output."""

    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputContentPart]
    id: str | None = None
    status: str | None = None


class FunctionCallInput(RequestModel):
    """A function call the model made (from a previous response's output)."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputInput(RequestModel):
    """The caller's result of a function call."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[InputContentPart]
    id: str | None = None
    status: str | None = None


class WebSearchCallInput(RequestModel):
    """A server-side web search of a previous response (replayed as context: the answer that followed it)."""

    type: Literal["web_search_call"]
    id: str
    status: str | None = None
    action: dict[str, Any] | None = None


class FileSearchCallInput(RequestModel):
    """A server-side file search of a previous response (context only, like a web search)."""

    type: Literal["file_search_call"]
    id: str
    status: str | None = None
    queries: list[str] | None = None
    results: list[dict[str, Any]] | None = None


class McpListToolsInput(RequestModel):
    type: Literal["mcp_list_tools"]
    id: str
    server_label: str
    tools: list[dict[str, Any]] = Field(default_factory=list)
    error: str | None = None


class McpCallInput(RequestModel):
    """An MCP tool call of a previous response (replayed: the call and its output)."""

    type: Literal["mcp_call"]
    id: str
    server_label: str
    name: str
    arguments: str
    output: str | None = None
    error: str | dict[str, Any] | None = None
    status: str | None = None


def _item_tag(value: Any) -> str | None:
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", None)
    return _ITEM_TAGS.get(kind) if isinstance(kind, str) else None


_ITEM_TAGS = {"message": "Message", "function_call": "FunctionCall", "function_call_output": "FunctionCallOutput",
              "web_search_call": "WebSearchCall", "mcp_list_tools": "McpListTools", "mcp_call": "McpCall",
              "file_search_call": "FileSearchCall"}
InputItem = Annotated[
    Annotated[InputMessage, Tag("Message")] | Annotated[FunctionCallInput, Tag("FunctionCall")]
    | Annotated[FunctionCallOutputInput, Tag("FunctionCallOutput")] | Annotated[WebSearchCallInput, Tag("WebSearchCall")]
    | Annotated[McpListToolsInput, Tag("McpListTools")] | Annotated[McpCallInput, Tag("McpCall")]
    | Annotated[FileSearchCallInput, Tag("FileSearchCall")],
    Discriminator(_item_tag, custom_error_type="invalid_item",
                  custom_error_message="an input item is a message ({role, content}) or has type function_call, "
                                       "function_call_output, web_search_call, file_search_call, mcp_list_tools or "
                                       "mcp_call")]


# ---- tools and tool_choice -------------------------------------------------------------------


class FunctionToolIn(RequestModel):
    """A function the caller runs: calls come back as `function_call` output items."""

    type: Literal["function"]
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class WebSearchToolIn(RequestModel):
    """Web search, run by the server (tool group builtin::websearch)."""

    type: Literal["web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11"]


class FileSearchToolIn(RequestModel):
    """Search over vector stores, run by the server (herd/rag through the builtin::rag tool group)."""

    type: Literal["file_search"]
    vector_store_ids: list[str] = Field(min_length=1, max_length=16)
    max_num_results: Int = Field(10, ge=1, le=50)
    filters: dict[str, Any] | None = None
    ranking_options: dict[str, Any] | None = None  # {ranker, score_threshold}


class McpToolFilter(RequestModel):
    tool_names: list[str] | None = None


class McpToolIn(RequestModel):
    """An MCP server the server connects to; its tools run server-side (only `require_approval: never`)."""

    type: Literal["mcp"]
    server_label: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    server_url: str = Field(min_length=1)
    allowed_tools: list[str] | McpToolFilter | None = None
    headers: dict[str, str] | None = None  # sent to the server; never echoed or stored
    authorization: str | None = None  # an OAuth token: sent as `Authorization: Bearer ...`; never echoed or stored
    require_approval: str | dict[str, Any] | None = None  # only "never" is served (checked by the route logic)
    server_description: str | None = None


def _tool_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind in WEB_SEARCH_TYPES:
        return "WebSearch"
    return {"function": "Function", "mcp": "Mcp", "file_search": "FileSearch"}.get(kind) if isinstance(kind, str) \
        else None


ToolIn = Annotated[
    Annotated[FunctionToolIn, Tag("Function")] | Annotated[WebSearchToolIn, Tag("WebSearch")]
    | Annotated[McpToolIn, Tag("Mcp")] | Annotated[FileSearchToolIn, Tag("FileSearch")],
    Discriminator(_tool_tag, custom_error_type="invalid_tool",
                  custom_error_message="herd serves tools of type function, web_search (web_search_preview), "
                                       "file_search and mcp")]


class NamedFunctionChoice(RequestModel):
    type: Literal["function"]
    name: str = Field(min_length=1)


class HostedToolChoice(RequestModel):
    type: Literal["web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11",
                  "file_search"]


class McpToolChoice(RequestModel):
    type: Literal["mcp"]
    server_label: str
    name: str | None = None


def _choice_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "Mode"
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind in WEB_SEARCH_TYPES or kind == "file_search":
        return "Hosted"
    return {"function": "Function", "mcp": "Mcp"}.get(kind) if isinstance(kind, str) else None


ToolChoiceIn = Annotated[
    Annotated[Literal["auto", "none", "required"], Tag("Mode")] | Annotated[NamedFunctionChoice, Tag("Function")]
    | Annotated[HostedToolChoice, Tag("Hosted")] | Annotated[McpToolChoice, Tag("Mcp")],
    Discriminator(_choice_tag, custom_error_type="invalid_tool_choice",
                  custom_error_message="tool_choice is auto, none, required, {type: function, name}, "
                                       "{type: web_search}, {type: file_search} or {type: mcp, server_label, name}")]


def _as_items(value: Any) -> Any:
    return [{"role": "user", "content": value}] if isinstance(value, str) else value


# ---- text format and the request ---------------------------------------------------------------


class TextFormat(RequestModel):
    """`{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema", "name", "schema", "strict"}`."""

    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True, allow_inf_nan=False)

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(RequestModel):
    format: TextFormat | None = None


class ResponseCreateRequest(RequestModel):
    """POST /v1/responses."""

    model: str = Field(min_length=1)
    input: Annotated[list[InputItem], BeforeValidator(_as_items)]  # a string is one user message
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    stream: bool = False
    tools: list[ToolIn] | None = None
    tool_choice: ToolChoiceIn | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: Int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tool_calls: Int | None = Field(None, ge=1)
    max_infer_iters: Int = Field(10, ge=1, le=MAX_INFER_ITERS)  # herd (Llama Stack) extension: model turns
    metadata: Metadata | None = Field(None, max_length=16)
    include: list[str] | None = None  # "file_search_call.results": the search results in the output item


# ---- what comes back -----------------------------------------------------------------------------


class ResponseUsage(ResponseModel):
    input_tokens: int
    input_tokens_details: dict[str, int] = Field(default_factory=lambda: {"cached_tokens": 0, "cache_write_tokens": 0})
    output_tokens: int
    output_tokens_details: dict[str, int] = Field(default_factory=lambda: {"reasoning_tokens": 0})
    total_tokens: int


class ResponseError(ResponseModel):
    code: str
    message: str


class ResponseIncomplete(ResponseModel):
    reason: str  # OpenAI: max_output_tokens / content_filter; herd: max_infer_iters


class ResponseObject(ResponseModel):
    """The `response` object (openai.types.responses.Response); output items are plain dicts built by
    herd.serve.responses in the openai package's item shapes."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "failed", "in_progress", "incomplete"]
    model: str
    output: list[dict[str, Any]] = Field(default_factory=list)
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    usage: ResponseUsage | None = None
    error: ResponseError | None = None
    incomplete_details: ResponseIncomplete | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    store: bool = True
    truncation: str = "disabled"
    background: bool = False


class ResponseItemPage(ResponseModel):
    """GET /v1/responses/{id}/input_items: a cursor page of items."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str
    last_id: str
    has_more: bool


class ResponseDeleted(ResponseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True
