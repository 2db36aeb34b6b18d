"""501 for the known Llama Stack and OpenAI routes herd does not serve yet.

A client calling `/v1/agents` or `/v1/vector_stores` gets `501 {"error": {"detail": "... is not
implemented by herd yet", ...}}` instead of a bare 404, so "wrong URL" (404) and "not there yet"
(501) look different. Llama Stack answers NotImplementedError with 501 too (STACK_API.md, 1).

The catch-all routes must be included *after* every served route (Starlette answers with the
first route that matches): `app.include_router(unserved.router)` last in routes.include_routes. When an API
starts being served, delete its entry from UNSERVED.
"""
from __future__ import annotations

from fastapi import APIRouter, Request

from herd.serve.errors import APIError

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
OPENAI_PREFIXES = ("/v1", "/v1/openai/v1")  # Llama Stack 0.2 serves the OpenAI routes under both
# (path prefix, the API's name): the prefix and everything below it answer 501
UNSERVED: tuple[tuple[str, str], ...] = (
    # Llama Stack 0.2 native APIs (STACK_API.md 1a) herd has no routes for yet
    ("/v1/telemetry", "telemetry"),
    ("/v1/inference/batch-chat-completion", "inference (batch)"),
    ("/v1/inference/batch-completion", "inference (batch)"),
    ("/v1/inference/rerank", "inference (rerank)"),
    # newer Llama Stack releases (STACK_API.md 1c)
    ("/v1/conversations", "conversations"),
    ("/v1/prompts", "prompts"),
    ("/v1/messages", "messages (Anthropic)"),
    ("/v1alpha", "Llama Stack v1alpha"),
    ("/v1beta", "Llama Stack v1beta"),
    # OpenAI routes, under /v1 and /v1/openai/v1
    *((f"{prefix}/{name}", f"OpenAI {name}") for prefix in OPENAI_PREFIXES
      for name in ("batches", "audio", "images", "fine_tuning",
                   "assistants", "threads", "uploads", "realtime", "evals", "containers")),
)

router = APIRouter()


def _answer(api: str):
    async def not_implemented(request: Request) -> None:
        raise APIError(501, f"{request.method} {request.url.path}: the {api} API is not implemented by herd yet",
                       code="not_implemented")

    return not_implemented


for _path, _api in UNSERVED:
    for _route in (_path, _path + "/{rest:path}"):
        router.add_api_route(_route, _answer(_api), methods=METHODS, include_in_schema=False,
                             name=f"unserved:{_route}")
