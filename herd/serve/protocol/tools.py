"""Tool runtime shapes (Llama Stack 0.2 `toolgroups`, `tools` and `tool-runtime`), as llama-stack-client
0.2.12 sends and reads them; `session_id` on invoke is herd's extension (code interpreter state)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from herd.serve.protocol.common import RequestModel, ResponseModel

__all__ = ['InvokeToolRequest', 'MCPEndpoint', 'RegisterToolGroupRequest', 'ToolDefOut', 'ToolGroupResource',
           'ToolInvocationOut', 'ToolParameterOut', 'ToolResource']


class MCPEndpoint(RequestModel):
    uri: str = Field(min_length=1)


class RegisterToolGroupRequest(RequestModel):
    """`POST /v1/toolgroups`: provider_id "model-context-protocol" with mcp_endpoint.uri registers an MCP
    server; the built-in groups are registered already (registering one again is a no-op)."""

    toolgroup_id: str = Field(min_length=1, max_length=256)
    provider_id: str = Field(min_length=1)
    mcp_endpoint: MCPEndpoint | None = None
    args: dict[str, Any] | None = None


class InvokeToolRequest(RequestModel):
    """`POST /v1/tool-runtime/invoke`; `session_id` (herd extension, sent with `extra_body`) keys a stateful
    tool's state: calls with the same id share one code interpreter kernel."""

    tool_name: str = Field(min_length=1)
    kwargs: dict[str, Any]
    session_id: str | None = Field(None, min_length=1, max_length=256)


class ToolGroupResource(ResponseModel):
    identifier: str
    provider_id: str
    provider_resource_id: str
    type: Literal["tool_group"] = "tool_group"
    mcp_endpoint: dict[str, str] | None = None
    args: dict[str, Any] | None = None


class ToolParameterOut(ResponseModel):
    """One parameter in Llama Stack's flat form (the JSON schema's property, its type and required-ness)."""

    name: str
    parameter_type: str
    description: str
    required: bool
    default: Any = None


class ToolResource(ResponseModel):
    """`GET /v1/tools` items; `input_schema` (herd extension) is the tool's whole JSON schema."""

    identifier: str
    provider_resource_id: str
    provider_id: str
    toolgroup_id: str
    type: Literal["tool"] = "tool"
    description: str
    parameters: list[ToolParameterOut]
    metadata: dict[str, Any] | None = None
    input_schema: dict[str, Any] | None = None


class ToolDefOut(ResponseModel):
    """`GET /v1/tool-runtime/list-tools` items."""

    name: str
    description: str | None = None
    parameters: list[ToolParameterOut]
    metadata: dict[str, Any] | None = None
    input_schema: dict[str, Any] | None = None


class ToolInvocationOut(ResponseModel):
    """`POST /v1/tool-runtime/invoke`: text content, or a list of text and image items when the tool
    attached images (`{"type": "image", "image": {"data": <base64>}}`)."""

    content: str | list[dict[str, Any]] | None = None
    error_message: str | None = None
    error_code: int | None = None
    metadata: dict[str, Any] | None = None
