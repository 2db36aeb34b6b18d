"""Every route of `herd serve`, in one place: thin functions that take the request (parsed into the
shapes of herd/serve/protocol), hand it to its endpoint family's module (chat, completions,
embeddings, models, safety, stored) and answer JSON or server-sent events.

    include_routes(app)     # what create_app does
"""
from __future__ import annotations

import json
import logging
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
from herd.serve import chat, completions, embeddings, models, safety, stored, unserved
from herd.serve import protocol as p
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
        return JSONResponse(result)
    return StreamingResponse(sse(result, ctx.send_done), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


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
    app.include_router(ops_routes)
    app.include_router(unserved.router)  # last: 501 for the known routes herd does not serve yet
