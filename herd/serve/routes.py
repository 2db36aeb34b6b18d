"""Every route of `herd serve`, in one place: thin functions that take the request (parsed into the
shapes of herd/serve/protocol), hand it to its endpoint family's module (chat, completions,
embeddings, models, safety, stored) and answer JSON or server-sent events.

    include_routes(app)     # what create_app does
"""
from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import (
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)

from herd import __version__
from herd.serve import (
    agents,
    chat,
    completions,
    datasets,
    embeddings,
    eval_routes,
    models,
    post_training,
    responses,
    safety,
    scoring,
    stored,
    synthetic_data,
    unserved,
    vector_stores,
)
from herd.serve import protocol as p
from herd.serve import tools as tool_runtime
from herd.serve.errors import APIError, api_error_response, error_body
from herd.serve.generation import CallContext, sampling_in
from herd.serve.models import ModelRegistry

log = logging.getLogger("herd.serve")


# ---- answering -----------------------------------------------------------------------------


async def sse(events: AsyncIterator[dict[str, Any]], send_done: bool) -> AsyncIterator[bytes]:
    """Server-sent events: `data: <json>` per event; an error mid-stream as `data: {"error": ...}`."""
    try:
        async for event in events:
            yield b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"
    except APIError as e:
        yield b"data: " + json.dumps(e.body()).encode() + b"\n\n"
    except Exception as e:
        log.exception("error while streaming")
        yield b"data: " + json.dumps(error_body(500, f"internal server error: {type(e).__name__}")).encode() + b"\n\n"
    if send_done:
        yield b"data: [DONE]\n\n"


async def respond(work: Awaitable[Any], ctx: CallContext) -> Response:
    """A dict becomes JSON; an async iterator becomes an SSE stream."""
    result = await work
    if isinstance(result, dict):
        return JSONResponse(result, headers=ctx.headers())
    return StreamingResponse(sse(result, ctx.send_done), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **ctx.headers()})


def _client_wants_no_done(request: Request) -> bool:
    """llama-stack-client < 0.3 json-parses every SSE event, so `[DONE]` would break it."""
    version = request.headers.get("x-llamastack-client-version")
    if not version:
        return False
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) < (0, 3)


def context(request: Request, prefix: str, native: bool = False) -> CallContext:
    """The CallContext of one request (engine request id, metrics, disconnect check, [DONE] or not,
    limits, the model queues and the drain)."""
    state = request.app.state
    ctx = CallContext(p.new_id(prefix), state.metrics, request.is_disconnected,
                      send_done=not native and not _client_wants_no_done(request),
                      shields=getattr(state, "shields", None), limits=state.config.limits,
                      admission=state.admission, drain=state.drain)
    request.state.herd_ctx = ctx  # the access log reads model and token counts from it
    return ctx


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


# ---- OpenAI (under /v1 and, for Llama Stack 0.2 clients, /v1/openai/v1) ------------------------

openai_routes = APIRouter()


@openai_routes.post("/chat/completions")
async def chat_completions(body: p.ChatCompletionRequest, request: Request) -> Response:
    """OpenAI chat completions (stream or not), with tools and structured output."""
    ctx = context(request, "chatcmpl")
    return await respond(chat.chat_completions(body, _registry(request), ctx, request.app.state.chat_store), ctx)


@openai_routes.get("/chat/completions", openapi_extra={"parameters": stored.LIST_PARAMS})
async def list_chat_completions(request: Request) -> dict[str, Any]:
    """Stored chat completions, newest first, each with its `input_messages` and `metadata`."""
    return await stored.list_completions(request.app.state.chat_store, request.query_params)


@openai_routes.get("/chat/completions/{completion_id}")
async def get_chat_completion(completion_id: str, request: Request) -> dict[str, Any]:
    """One stored chat completion, with its `input_messages` and `metadata`."""
    return await stored.get_completion(request.app.state.chat_store, completion_id)


@openai_routes.get("/chat/completions/{completion_id}/messages", openapi_extra={"parameters": stored.MESSAGE_PARAMS})
async def list_chat_completion_messages(completion_id: str, request: Request) -> dict[str, Any]:
    """The input messages of a stored chat completion, as a page (ids `<completion_id>-<n>`)."""
    return await stored.list_messages(request.app.state.chat_store, completion_id, request.query_params)


@openai_routes.delete("/chat/completions/{completion_id}")
async def delete_chat_completion(completion_id: str, request: Request) -> dict[str, Any]:
    """Delete a stored chat completion."""
    return await stored.delete_completion(request.app.state.chat_store, completion_id)


@openai_routes.post("/completions")
async def openai_completions(body: p.CompletionRequest, request: Request) -> Response:
    """OpenAI (legacy) text completions."""
    ctx = context(request, "cmpl")
    return await respond(completions.completions(body, _registry(request), ctx), ctx)


@openai_routes.post("/embeddings")
async def openai_embeddings(body: p.EmbeddingRequest, request: Request) -> Response:
    """OpenAI embeddings (float or base64)."""
    ctx = context(request, "emb")
    return await respond(embeddings.openai_embeddings(body, _registry(request), ctx), ctx)


@openai_routes.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Served models, in the OpenAI and Llama Stack shapes at once."""
    return models.models_list(_registry(request))


@openai_routes.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    """One model; ids may contain '/'."""
    return models.model_get(_registry(request), model_id)


# ---- OpenAI responses (herd/serve/responses.py; same two prefixes) ------------------------------


def _responses(request: Request) -> responses.ResponseStore:
    """The app's stored responses (<herd_home>/responses.sqlite), made on first use."""
    state = request.app.state
    if getattr(state, "responses", None) is None:
        state.responses = responses.ResponseStore()
    return state.responses


@openai_routes.post("/responses")
async def create_response(body: p.ResponseCreateRequest, request: Request) -> Response:
    """OpenAI responses: input items, function / web_search / mcp tools, stream or not; kept unless store: false."""
    ctx = context(request, "resp")
    result = await responses.create_response(body, _registry(request), request.app.state.tools,
                                              _responses(request), ctx)
    if isinstance(result, dict):
        return JSONResponse(result)
    return StreamingResponse(responses.sse_events(result), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@openai_routes.get("/responses/{response_id}")
async def get_response(response_id: str, request: Request) -> dict[str, Any]:
    """A stored response."""
    return await responses.get_response(_responses(request), response_id)


@openai_routes.delete("/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
    """Delete a stored response."""
    return await responses.delete_response(_responses(request), response_id)


@openai_routes.get("/responses/{response_id}/input_items", openapi_extra={"parameters": responses.ITEM_PARAMS})
async def list_response_input_items(response_id: str, request: Request) -> dict[str, Any]:
    """The items a stored response read (earlier responses' items first), as a page; newest first by default."""
    return await responses.list_input_items(_responses(request), response_id, request.query_params)


# ---- OpenAI files and vector stores (herd/serve/vector_stores.py; same two prefixes) -------------------

_VS = "/vector_stores/{vector_store_id}"


def _rag(request: Request) -> Any:
    """The app's RagService (made on first use)."""
    return vector_stores.service(request.app)


@openai_routes.post("/files", openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
    "schema": {"type": "object", "required": ["file", "purpose"], "properties": {
        "file": {"type": "string", "format": "binary"}, "purpose": {"type": "string", "enum": list(vector_stores.PURPOSES)}}}}}}})
async def upload_file(request: Request) -> dict[str, Any]:
    """Upload a file (multipart: `file`, `purpose`); for retrieval purposes its text is checked now (400)."""
    try:
        form = await request.form(max_files=1, max_fields=16)
    except Exception as e:  # noqa: BLE001 - a malformed multipart body is the client's error
        raise APIError(400, f"the upload is not valid multipart/form-data: {e}", param="file") from None
    upload, purpose = form.get("file"), form.get("purpose")
    if upload is None or isinstance(upload, str):
        raise APIError(400, "the form needs a `file` field holding the file", param="file")
    if not isinstance(purpose, str) or not purpose:
        raise APIError(400, f"the form needs a `purpose` field: one of {', '.join(vector_stores.PURPOSES)}",
                       param="purpose")
    data = await upload.read()
    return await vector_stores.upload_file(_rag(request), upload.filename, data, purpose)


@openai_routes.get("/files", openapi_extra={"parameters": vector_stores.PAGE_PARAMS + [
    {"name": "purpose", "in": "query", "required": False, "schema": {"type": "string"}}]})
async def list_files(request: Request) -> dict[str, Any]:
    """Uploaded files, newest first (`?purpose=` keeps one purpose)."""
    return await vector_stores.list_files(_rag(request), request.query_params)


@openai_routes.get("/files/{file_id}")
async def get_file(file_id: str, request: Request) -> dict[str, Any]:
    return await vector_stores.get_file(_rag(request), file_id)


@openai_routes.get("/files/{file_id}/content")
async def get_file_content(file_id: str, request: Request) -> Response:
    """The file's bytes."""
    data, name = await vector_stores.file_content(_rag(request), file_id)
    quoted = urllib.parse.quote(name)
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quoted}"})


@openai_routes.delete("/files/{file_id}")
async def delete_file(file_id: str, request: Request) -> dict[str, Any]:
    """Delete a file: it leaves every vector store first (its chunks are no longer found)."""
    return await vector_stores.delete_file(_rag(request), file_id)


@openai_routes.post("/vector_stores")
async def create_vector_store(body: p.VectorStoreCreateRequest, request: Request) -> dict[str, Any]:
    """Create a vector store, with files (ingested in the background) and a chunking strategy."""
    return await vector_stores.create_store(_rag(request), body)


@openai_routes.get("/vector_stores", openapi_extra={"parameters": vector_stores.PAGE_PARAMS})
async def list_vector_stores(request: Request) -> dict[str, Any]:
    return await vector_stores.list_stores(_rag(request), request.query_params)


@openai_routes.get(_VS)
async def get_vector_store(vector_store_id: str, request: Request) -> dict[str, Any]:
    return await vector_stores.get_store(_rag(request), vector_store_id)


@openai_routes.post(_VS)
async def update_vector_store(vector_store_id: str, body: p.VectorStoreUpdateRequest, request: Request) -> dict[str, Any]:
    return await vector_stores.update_store(_rag(request), vector_store_id, body)


@openai_routes.delete(_VS)
async def delete_vector_store(vector_store_id: str, request: Request) -> dict[str, Any]:
    """Delete a vector store and its chunks (the files stay)."""
    return await vector_stores.delete_store(_rag(request), vector_store_id)


@openai_routes.post(_VS + "/search")
async def search_vector_store(vector_store_id: str, body: p.VectorStoreSearchRequest, request: Request) -> dict[str, Any]:
    """Search: query, filters, max_num_results, ranking_options; `search_mode` (herd) vector/keyword/hybrid."""
    return await vector_stores.search_store(_rag(request), vector_store_id, body)


@openai_routes.post(_VS + "/files")
async def attach_vector_store_file(vector_store_id: str, body: p.VectorStoreFileCreateRequest,
                                   request: Request) -> dict[str, Any]:
    """Add a file (with attributes): checked now, chunked and embedded in the background."""
    return await vector_stores.attach_file(_rag(request), vector_store_id, body)


@openai_routes.get(_VS + "/files", openapi_extra={"parameters": vector_stores.PAGE_PARAMS + [
    {"name": "filter", "in": "query", "required": False, "schema": {"type": "string"}}]})
async def list_vector_store_files(vector_store_id: str, request: Request) -> dict[str, Any]:
    """The store's files (`?filter=` one status)."""
    return await vector_stores.list_store_files(_rag(request), vector_store_id, request.query_params)


@openai_routes.get(_VS + "/files/{file_id}")
async def get_vector_store_file(vector_store_id: str, file_id: str, request: Request) -> dict[str, Any]:
    return await vector_stores.get_store_file(_rag(request), vector_store_id, file_id)


@openai_routes.post(_VS + "/files/{file_id}")
async def update_vector_store_file(vector_store_id: str, file_id: str, body: p.VectorStoreFileUpdateRequest,
                                   request: Request) -> dict[str, Any]:
    """Replace the file's attributes (filters see them at once)."""
    return await vector_stores.update_store_file(_rag(request), vector_store_id, file_id, body)


@openai_routes.delete(_VS + "/files/{file_id}")
async def detach_vector_store_file(vector_store_id: str, file_id: str, request: Request) -> dict[str, Any]:
    """Remove a file from the store (its chunks go; the file stays)."""
    return await vector_stores.detach_file(_rag(request), vector_store_id, file_id)


@openai_routes.get(_VS + "/files/{file_id}/content")
async def vector_store_file_content(vector_store_id: str, file_id: str, request: Request) -> dict[str, Any]:
    """The file's chunks, as text items."""
    return await vector_stores.store_file_content(_rag(request), vector_store_id, file_id)


@openai_routes.post(_VS + "/file_batches")
async def create_file_batch(vector_store_id: str, body: p.FileBatchCreateRequest, request: Request) -> dict[str, Any]:
    """Add several files at once (all checked before any is added)."""
    return await vector_stores.create_batch(_rag(request), vector_store_id, body)


@openai_routes.get(_VS + "/file_batches/{batch_id}")
async def get_file_batch(vector_store_id: str, batch_id: str, request: Request) -> dict[str, Any]:
    return await vector_stores.get_batch(_rag(request), vector_store_id, batch_id)


@openai_routes.post(_VS + "/file_batches/{batch_id}/cancel")
async def cancel_file_batch(vector_store_id: str, batch_id: str, request: Request) -> dict[str, Any]:
    return await vector_stores.cancel_batch(_rag(request), vector_store_id, batch_id)


@openai_routes.get(_VS + "/file_batches/{batch_id}/files", openapi_extra={"parameters": vector_stores.PAGE_PARAMS})
async def list_file_batch_files(vector_store_id: str, batch_id: str, request: Request) -> dict[str, Any]:
    return await vector_stores.list_store_files(_rag(request), vector_store_id, request.query_params, batch_id)


# ---- Llama Stack native, inspection ------------------------------------------------------------

stack_routes = APIRouter(prefix="/v1")


@stack_routes.post("/inference/chat-completion")
async def stack_chat(body: p.StackChatRequest, request: Request) -> Response:
    """Llama Stack 0.2 native chat completion."""
    ctx = context(request, "chatcmpl", native=True)
    return await respond(chat.stack_chat_completion(body, _registry(request), ctx), ctx)


@stack_routes.post("/inference/completion")
async def stack_completion(body: p.StackCompletionRequest, request: Request) -> Response:
    """Llama Stack 0.2 native completion."""
    ctx = context(request, "cmpl", native=True)
    sampling, max_tokens = sampling_in(body.sampling_params)
    return await respond(completions.stack_completion(body, _registry(request), ctx, sampling, max_tokens), ctx)


@stack_routes.post("/inference/embeddings")
async def stack_embeddings(body: p.StackEmbeddingsRequest, request: Request) -> Response:
    """Llama Stack 0.2 native embeddings."""
    ctx = context(request, "emb", native=True)
    return await respond(embeddings.stack_embeddings(body, _registry(request), ctx), ctx)


@stack_routes.post("/models")
async def register_model(body: p.RegisterModelRequest, request: Request) -> dict[str, Any]:
    """Registering a model that is served is a no-op; others are declared at startup (400)."""
    return models.register_model(_registry(request), body)


@stack_routes.get("/health")
async def health() -> dict[str, str]:
    """Llama Stack health (open without an API key, and while draining)."""
    return {"status": "OK"}


stack_routes.add_api_route("/health", health, methods=["HEAD"], operation_id="head_health")  # load balancers


@stack_routes.get("/version")
async def version() -> dict[str, str]:
    """The herd version."""
    return {"version": __version__}


@stack_routes.get("/providers")
async def providers(request: Request) -> dict[str, Any]:
    """Every provider that serves something, with the API it serves (inference: herd; safety: each shield
    type; the subsystems that mount routes add theirs to `app.state.providers`)."""
    return {"data": request.app.state.providers}


@stack_routes.get("/providers/{provider_id}")
async def provider(provider_id: str, request: Request) -> dict[str, Any]:
    """One provider by id."""
    found = [x for x in request.app.state.providers if x["provider_id"] == provider_id]
    if not found:
        ids = ", ".join(dict.fromkeys(x["provider_id"] for x in request.app.state.providers))
        raise APIError(404, f"provider {provider_id!r} not found; available providers: {ids}")
    return found[0]


@stack_routes.get("/inspect/routes")
async def inspect_routes(request: Request) -> dict[str, Any]:
    """Every documented route this server answers (the /v1/openai/v1 aliases are left out)."""
    rows = [{"route": path, "method": method.upper(), "provider_types": ["inline::herd"]}
            for path, ops in request.app.openapi().get("paths", {}).items() for method in ops]
    return {"data": rows}


# ---- safety (sync: FastAPI runs them in its thread pool, the guard models block) ----------------

safety_routes = APIRouter(tags=["safety"])


@safety_routes.post("/v1/safety/run-shield", response_model=p.RunShieldResponse)
def run_shield(body: p.RunShieldRequest, request: Request) -> p.RunShieldResponse:
    """Llama Stack `safety.run_shield`."""
    return safety.run_shield(safety.registry_of(request), body)


@safety_routes.get("/v1/shields", response_model=p.ListShieldsResponse)
def list_shields(request: Request) -> p.ListShieldsResponse:
    """Llama Stack `shields.list`: every configured shield (loaded or not)."""
    return safety.list_shields(safety.registry_of(request))


@safety_routes.get("/v1/shields/{identifier:path}", response_model=p.ShieldResource)
def get_shield(identifier: str, request: Request) -> p.ShieldResource:
    """Llama Stack `shields.retrieve`; 404 naming the available ids."""
    return safety.get_shield(safety.registry_of(request), identifier)


@safety_routes.post("/v1/moderations", response_model=p.ModerationResponse)
@safety_routes.post("/v1/openai/v1/moderations", response_model=p.ModerationResponse, include_in_schema=False)
def moderations(body: p.ModerationRequest, request: Request) -> p.ModerationResponse:
    """OpenAI `moderations.create` (also under Llama Stack 0.2's /v1/openai/v1 prefix)."""
    return safety.moderate(safety.registry_of(request), body)


def mount_safety(app: FastAPI, registry: Any) -> None:
    """The safety routes and a shield registry (herd.safety ShieldRegistry) on an app (herd's, or one of
    your own: its APIError handler is installed when missing)."""
    app.state.shields = registry
    if APIError not in app.exception_handlers:
        app.add_exception_handler(APIError, api_error_response)  # type: ignore[arg-type]
    app.include_router(safety_routes)


# ---- Llama Stack agents (0.2 classic; herd/serve/agents.py) ---------------------------------------

agent_routes = APIRouter(prefix="/v1/agents")
_SESSION = "/{agent_id}/session/{session_id}"


@agent_routes.post("")
async def create_agent(body: p.CreateAgentRequest, request: Request) -> dict[str, Any]:
    """Create an agent: `{agent_config}` -> `{agent_id}` (model, tool groups and shields are checked)."""
    return await agents.create_agent(body, request)


@agent_routes.get("")
async def list_agents(request: Request) -> dict[str, Any]:
    return await agents.list_agents(request)


@agent_routes.get("/{agent_id}")
async def get_agent(agent_id: str, request: Request) -> dict[str, Any]:
    return await agents.get_agent(agent_id, request)


@agent_routes.delete("/{agent_id}")
async def delete_agent(agent_id: str, request: Request) -> None:
    """Delete an agent, its sessions and turns (and end its sessions' tool state)."""
    await agents.delete_agent(agent_id, request)


@agent_routes.post("/{agent_id}/session")
async def create_session(agent_id: str, body: p.CreateSessionRequest, request: Request) -> dict[str, Any]:
    return await agents.create_session(agent_id, body, request)


@agent_routes.get("/{agent_id}/sessions")
async def list_sessions(agent_id: str, request: Request) -> dict[str, Any]:
    return await agents.list_sessions(agent_id, request)


@agent_routes.get(_SESSION)
async def get_session(agent_id: str, session_id: str, request: Request) -> dict[str, Any]:
    """A session with its turns (`?turn_ids=` keeps only those)."""
    return await agents.get_session(agent_id, session_id, request, request.query_params.getlist("turn_ids"))


@agent_routes.delete(_SESSION)
async def delete_session(agent_id: str, session_id: str, request: Request) -> None:
    await agents.delete_session(agent_id, session_id, request)


@agent_routes.post(_SESSION + "/turn")
async def create_turn(agent_id: str, session_id: str, body: p.CreateTurnRequest, request: Request) -> Response:
    """Run a turn: turn events as a stream (`stream: true`) or the finished Turn."""
    ctx = context(request, "turn", native=True)
    return await respond(agents.create_turn(agent_id, session_id, body, request, ctx), ctx)


@agent_routes.post(_SESSION + "/turn/{turn_id}/resume")
async def resume_turn(agent_id: str, session_id: str, turn_id: str, body: p.ResumeTurnRequest,
                      request: Request) -> Response:
    """Go on with a turn that awaits client tool responses."""
    ctx = context(request, "turn", native=True)
    return await respond(agents.resume_turn(agent_id, session_id, turn_id, body, request, ctx), ctx)


@agent_routes.get(_SESSION + "/turn/{turn_id}")
async def get_turn(agent_id: str, session_id: str, turn_id: str, request: Request) -> dict[str, Any]:
    return await agents.get_turn(agent_id, session_id, turn_id, request)


@agent_routes.get(_SESSION + "/turn/{turn_id}/step/{step_id}")
async def get_step(agent_id: str, session_id: str, turn_id: str, step_id: str, request: Request) -> dict[str, Any]:
    return await agents.get_step(agent_id, session_id, turn_id, step_id, request)


# ---- tool groups and tool runtime (Llama Stack 0.2; herd/serve/tools.py) -------------------------

tool_routes = APIRouter(prefix="/v1", tags=["tools"])


def _tools(request: Request) -> tuple[Any, Any]:
    """The app's tool registry and the tool runtime's state (store, HTTP-registered groups)."""
    return request.app.state.tools, request.app.state.tool_runtime


@tool_routes.get("/toolgroups")
async def list_toolgroups(request: Request) -> dict[str, Any]:
    """Every tool group: the built-in ones, the configured MCP servers and those registered over HTTP."""
    return tool_runtime.list_groups(*_tools(request))


@tool_routes.post("/toolgroups")
async def register_toolgroup(body: p.RegisterToolGroupRequest, request: Request) -> None:
    """Register an MCP server (provider_id "model-context-protocol", mcp_endpoint.uri); kept across restarts."""
    await tool_runtime.register_group(*_tools(request), body)


@tool_routes.get("/toolgroups/{toolgroup_id:path}")
async def get_toolgroup(toolgroup_id: str, request: Request) -> dict[str, Any]:
    """One tool group; 404 naming the registered ones."""
    return tool_runtime.get_group(*_tools(request), toolgroup_id)


@tool_routes.delete("/toolgroups/{toolgroup_id:path}")
async def unregister_toolgroup(toolgroup_id: str, request: Request) -> None:
    """Remove an MCP group registered over HTTP (built-in and configured groups: 400)."""
    await tool_runtime.unregister_group(*_tools(request), toolgroup_id)


@tool_routes.get("/tools", openapi_extra={"parameters": [
    {"name": "toolgroup_id", "in": "query", "required": False, "schema": {"type": "string"}}]})
async def list_tools(request: Request) -> dict[str, Any]:
    """Tools, of one group with `?toolgroup_id=`."""
    return await tool_runtime.list_tools(request.app.state.tools, request.query_params.get("toolgroup_id"))


@tool_routes.get("/tools/{tool_name}")
async def get_tool(tool_name: str, request: Request) -> dict[str, Any]:
    """One tool by name; 404 naming the available ones."""
    return tool_runtime.get_tool(request.app.state.tools, tool_name)


@tool_routes.get("/tool-runtime/list-tools", openapi_extra={"parameters": [
    {"name": "tool_group_id", "in": "query", "required": False, "schema": {"type": "string"}},
    {"name": "mcp_endpoint[uri]", "in": "query", "required": False, "schema": {"type": "string"}}]})
async def runtime_list_tools(request: Request) -> dict[str, Any]:
    """Tool definitions: of a group (`tool_group_id`), of an MCP endpoint (`mcp_endpoint[uri]`), or all."""
    return await tool_runtime.runtime_list_tools(*_tools(request), request.query_params)


@tool_routes.post("/tool-runtime/invoke")
async def invoke_tool(body: p.InvokeToolRequest, request: Request) -> dict[str, Any]:
    """Run a tool: `{content, error_message, error_code, metadata}`; `session_id` (herd extension) keeps a
    stateful tool's state (the code interpreter's kernel) across calls."""
    return await tool_runtime.invoke(request.app.state.tools, body)


# ---- Llama Stack vector DBs, vector-io and the rag tool (herd/serve/vector_stores.py) ----------------

rag_routes = APIRouter(prefix="/v1", tags=["vector_io"])


@rag_routes.get("/vector-dbs")
async def list_vector_dbs(request: Request) -> dict[str, Any]:
    """Every vector DB (the same stores as /v1/vector_stores)."""
    return await vector_stores.list_vector_dbs(_rag(request))


@rag_routes.post("/vector-dbs")
async def register_vector_db(body: p.RegisterVectorDBRequest, request: Request) -> dict[str, Any]:
    """Register a vector DB (a vector store with this id); again with the same model: a no-op."""
    return await vector_stores.register_vector_db(_rag(request), body)


@rag_routes.get("/vector-dbs/{vector_db_id:path}")
async def get_vector_db(vector_db_id: str, request: Request) -> dict[str, Any]:
    return await vector_stores.get_vector_db(_rag(request), vector_db_id)


@rag_routes.delete("/vector-dbs/{vector_db_id:path}")
async def unregister_vector_db(vector_db_id: str, request: Request) -> None:
    await vector_stores.delete_vector_db(_rag(request), vector_db_id)


@rag_routes.post("/vector-io/insert")
async def vector_io_insert(body: p.VectorIOInsertRequest, request: Request) -> None:
    """Insert chunks (metadata.document_id; embeddings optional), all or none."""
    await vector_stores.insert_chunks(_rag(request), body)


@rag_routes.post("/vector-io/query")
async def vector_io_query(body: p.VectorIOQueryRequest, request: Request) -> dict[str, Any]:
    """Query: {chunks, scores}; params max_chunks, mode (vector/keyword/hybrid), ranker, score_threshold."""
    return await vector_stores.query_chunks(_rag(request), body)


@rag_routes.post("/tool-runtime/rag-tool/insert")
async def rag_tool_insert(body: p.RagInsertRequest, request: Request) -> None:
    """Insert documents (text, or data: URLs of any supported file type), chunked by chunk_size_in_tokens."""
    await vector_stores.rag_insert(_rag(request), body)


@rag_routes.post("/tool-runtime/rag-tool/query")
async def rag_tool_query(body: p.RagQueryRequest, request: Request) -> dict[str, Any]:
    """Retrieve from vector DBs: the chunks laid out for a model, with document ids, chunks and scores."""
    return await vector_stores.rag_query(_rag(request), body)


# ---- Llama Stack datasets (herd/serve/datasets.py) ----------------------------------------------------

data_routes = APIRouter(prefix="/v1", tags=["datasets"])


def _datasets(request: Request) -> datasets.DatasetStore:
    """The app's datasets (<herd_home>/datasets.sqlite), made on first use."""
    state = request.app.state
    if getattr(state, "datasets", None) is None:
        state.datasets = datasets.DatasetStore()
    return state.datasets


@data_routes.get("/datasets")
async def list_datasets(request: Request) -> dict[str, Any]:
    return await datasets.list_all(_datasets(request))


@data_routes.post("/datasets")
async def register_dataset(body: p.RegisterDatasetRequest, request: Request) -> dict[str, Any]:
    """Register rows, or a local / file:// / data: URI of JSONL, JSON or CSV; rows are checked against the purpose."""
    return await datasets.register(_datasets(request), body)


@data_routes.get("/datasets/{dataset_id:path}")
async def get_dataset(dataset_id: str, request: Request) -> dict[str, Any]:
    return await datasets.get(_datasets(request), dataset_id)


@data_routes.delete("/datasets/{dataset_id:path}")
async def unregister_dataset(dataset_id: str, request: Request) -> None:
    await datasets.unregister(_datasets(request), dataset_id)


@data_routes.get("/datasetio/iterrows/{dataset_id:path}", openapi_extra={"parameters": [
    {"name": "start_index", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": -1}}]})
async def iterrows(dataset_id: str, request: Request) -> dict[str, Any]:
    """A page of rows: `start_index`, `limit` (-1 or absent: all)."""
    return await datasets.iterrows(_datasets(request), dataset_id, request.query_params)


@data_routes.post("/datasetio/append-rows/{dataset_id:path}")
async def append_rows(dataset_id: str, body: p.AppendRowsRequest, request: Request) -> None:
    """Add rows at the end (checked against the dataset's purpose)."""
    await datasets.append_rows(_datasets(request), dataset_id, body.rows)


# ---- Llama Stack post-training (herd/serve/post_training.py) -------------------------------------------------

train_routes = APIRouter(prefix="/v1/post-training", tags=["post_training"])


@train_routes.post("/supervised-fine-tune", response_model=p.PostTrainingJob)
async def supervised_fine_tune(body: p.SupervisedFineTuneRequest, request: Request) -> dict[str, Any]:
    """Fine-tune a served model on a registered dataset (LoRA, or every weight): a background job."""
    return await post_training.submit(request.app, _datasets(request), body, "sft")


@train_routes.post("/preference-optimize", response_model=p.PostTrainingJob)
async def preference_optimize(body: p.PreferenceOptimizeRequest, request: Request) -> dict[str, Any]:
    """DPO on a dataset of {prompt, chosen, rejected} rows: a background job."""
    return await post_training.submit(request.app, _datasets(request), body, "dpo")


@train_routes.get("/jobs", response_model=p.PostTrainingJobList)
async def list_training_jobs(request: Request) -> dict[str, Any]:
    return await post_training.list_jobs(request.app)


@train_routes.get("/job/status", response_model=p.PostTrainingJobStatus)
async def training_job_status(job_uuid: str, request: Request) -> dict[str, Any]:
    """Status, times and checkpoints (with the training loss) of a job; `error` says why one failed."""
    return await post_training.status(request.app, job_uuid)


@train_routes.get("/job/artifacts", response_model=p.PostTrainingJobArtifacts)
async def training_job_artifacts(job_uuid: str, request: Request) -> dict[str, Any]:
    """A job's checkpoints: resumable states (step-N), then adapter/ and merged/ (`herd serve --model PATH`)."""
    return await post_training.artifacts(request.app, job_uuid)


@train_routes.post("/job/cancel")
async def cancel_training_job(body: p.TrainingJobRequest, request: Request) -> None:
    """Stop a scheduled or running job (409 for one that has ended)."""
    await post_training.cancel(request.app, body.job_uuid)


# ---- Llama Stack scoring, eval and synthetic data (herd/serve/scoring.py, eval_routes.py, synthetic_data.py) --

evaluation_routes = APIRouter(prefix="/v1", tags=["eval"])
_BENCH = "/eval/benchmarks/{benchmark_id:path}"


@evaluation_routes.get("/scoring-functions", response_model=p.ScoringFnList)
async def list_scoring_functions(request: Request) -> dict[str, Any]:
    """The built-in scoring functions (basic::*, llm-as-judge::base) and those registered."""
    return await scoring.list_functions(request.app)


@evaluation_routes.post("/scoring-functions")
async def register_scoring_function(body: p.RegisterScoringFnRequest, request: Request) -> None:
    """Register a built-in with preset params under a new id (kept across restarts)."""
    await scoring.register_function(request.app, body)


@evaluation_routes.get("/scoring-functions/{scoring_fn_id:path}", response_model=p.ScoringFnResource)
async def get_scoring_function(scoring_fn_id: str, request: Request) -> dict[str, Any]:
    return await scoring.get_function(request.app, scoring_fn_id)


@evaluation_routes.delete("/scoring-functions/{scoring_fn_id:path}")
async def unregister_scoring_function(scoring_fn_id: str, request: Request) -> None:
    """Remove a registered scoring function (built-ins: 400)."""
    await scoring.unregister_function(request.app, scoring_fn_id)


@evaluation_routes.post("/scoring/score", response_model=p.ScoreResponse)
async def score(body: p.ScoreRequest, request: Request) -> dict[str, Any]:
    """Score rows (generated_answer, expected_answer, input_query) with each function: score_rows and aggregates."""
    ctx = context(request, "score", native=True)
    return await scoring.score(request.app, body, ctx)


@evaluation_routes.post("/scoring/score-batch", response_model=p.ScoreBatchResponse)
async def score_batch(body: p.ScoreBatchRequest, request: Request) -> dict[str, Any]:
    """Score a registered dataset's rows; save_results_dataset registers the scored rows as a new dataset."""
    ctx = context(request, "score", native=True)
    return await scoring.score_batch(request.app, _datasets(request), body, ctx)


@evaluation_routes.get("/eval/benchmarks", response_model=p.BenchmarkList)
async def list_benchmarks(request: Request) -> dict[str, Any]:
    return await eval_routes.list_benchmarks(request.app)


@evaluation_routes.post("/eval/benchmarks")
async def register_benchmark(body: p.RegisterBenchmarkRequest, request: Request) -> None:
    """Register a benchmark: a dataset and the scoring functions that grade it (kept across restarts)."""
    await eval_routes.register_benchmark(request.app, _datasets(request), body)


@evaluation_routes.post(_BENCH + "/jobs", response_model=p.EvalJob)
async def run_eval(benchmark_id: str, body: p.RunEvalRequest, request: Request) -> dict[str, Any]:
    """Evaluate a model on the benchmark in the background: {job_id, status}."""
    return await eval_routes.run_eval(request.app, _datasets(request), benchmark_id, body)


@evaluation_routes.post(_BENCH + "/evaluations", response_model=p.EvaluateResponse)
async def evaluate_rows(benchmark_id: str, body: p.EvaluateRowsRequest, request: Request) -> dict[str, Any]:
    """Generate answers for the rows and score them, now: {generations, scores}."""
    ctx = context(request, "eval", native=True)
    return await eval_routes.evaluate_rows(request.app, benchmark_id, body, ctx)


@evaluation_routes.get(_BENCH + "/jobs/{job_id}/result", response_model=p.EvaluateResponse)
async def eval_job_result(benchmark_id: str, job_id: str, request: Request) -> dict[str, Any]:
    """A completed job's {generations, scores} (409 before it completed)."""
    return await eval_routes.job_result(request.app, benchmark_id, job_id)


@evaluation_routes.get(_BENCH + "/jobs/{job_id}", response_model=p.EvalJob)
async def eval_job_status(benchmark_id: str, job_id: str, request: Request) -> dict[str, Any]:
    """{job_id, status}, with herd's times, progress and (failed) error."""
    return await eval_routes.job_status(request.app, benchmark_id, job_id)


@evaluation_routes.delete(_BENCH + "/jobs/{job_id}")
async def cancel_eval_job(benchmark_id: str, job_id: str, request: Request) -> None:
    """Cancel a scheduled or running job (409 for one that has ended)."""
    await eval_routes.cancel_job(request.app, benchmark_id, job_id)


@evaluation_routes.get(_BENCH, response_model=p.BenchmarkResource)  # after the job routes: the id is a path
async def get_benchmark(benchmark_id: str, request: Request) -> dict[str, Any]:
    return await eval_routes.get_benchmark(request.app, benchmark_id)


@evaluation_routes.delete(_BENCH)
async def unregister_benchmark(benchmark_id: str, request: Request) -> None:
    await eval_routes.unregister_benchmark(request.app, benchmark_id)


@evaluation_routes.post("/synthetic-data-generation/generate", response_model=p.SyntheticDataResponse)
async def synthetic_data_generate(body: p.SyntheticDataRequest, request: Request) -> dict[str, Any]:
    """Responses to each prompt, graded by a judge and filtered by filtering_function (herd/serve/synthetic_data.py)."""
    ctx = context(request, "sdg", native=True)
    return await synthetic_data.generate(_registry(request), body, ctx)


# ---- operations (not in the API document) ------------------------------------------------------

ops_routes = APIRouter(include_in_schema=False)


@ops_routes.get("/metrics")
async def metrics(request: Request) -> PlainTextResponse:
    """Prometheus metrics."""
    state = request.app.state
    return PlainTextResponse(state.metrics.render(state.registry), media_type="text/plain; version=0.0.4")


@ops_routes.get("/")
async def root(request: Request) -> dict[str, Any]:
    """What this server is."""
    return {"name": "herd", "version": __version__, "models": _registry(request).ids,
            "openai_base_url": "/v1", "routes": "/v1/inspect/routes"}


def include_routes(app: FastAPI) -> None:
    """Every router on the app (the safety routes come with the shield registry: mount_safety, first)."""
    app.include_router(openai_routes, prefix="/v1")
    app.include_router(openai_routes, prefix="/v1/openai/v1", include_in_schema=False)  # Llama Stack 0.2 clients
    app.include_router(stack_routes)
    app.include_router(agent_routes)
    app.include_router(tool_routes)
    app.include_router(rag_routes)
    app.include_router(data_routes)
    app.include_router(train_routes)
    app.include_router(evaluation_routes)
    app.include_router(ops_routes)
    app.include_router(unserved.router)  # last: 501 for the known routes herd does not serve yet
