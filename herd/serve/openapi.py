"""The OpenAPI document as the server behaves: validation errors are 400s in Herd's error shape (not
FastAPI's 422), every status a route can answer is listed (401, 404, 408, 413, 415, 429, 503, ...),
and the routes that stream say so (`text/event-stream`). Checked by schemathesis (make reliability)."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "type"],
        "properties": {
            "message": {"type": "string"}, "type": {"type": "string"},
            "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]},
            "detail": {"type": "string", "description": "the message again, for Llama Stack clients"},
        }}},
}
# with stream: true, each server-sent event (the schema describes one event, as OpenAPI tools read it)
SSE_EVENT: dict[str, Any] = {
    "type": "object", "required": ["data"],
    "description": "`data: <chunk JSON>` per chunk, an error as `data: {\"error\": ...}`, then `data: [DONE]`",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"},
                   "retry": {"type": "integer"}},
}
STREAMING = {"/v1/chat/completions", "/v1/completions", "/v1/inference/chat-completion", "/v1/inference/completion",
             "/v1/responses", "/v1/agents/{agent_id}/session/{session_id}/turn",
             "/v1/agents/{agent_id}/session/{session_id}/turn/{turn_id}/resume"}
# the scoring routes run judge models; evaluations and synthetic data generate
GENERATING = STREAMING | {"/v1/embeddings", "/v1/inference/embeddings", "/v1/scoring/score", "/v1/scoring/score-batch",
                          "/v1/eval/benchmarks/{benchmark_id}/evaluations", "/v1/synthetic-data-generation/generate"}
SHIELDED = {"/v1/chat/completions", "/v1/inference/chat-completion", "/v1/safety/run-shield", "/v1/moderations"}
OPEN = {"/v1/health"}
# registering an id that exists (differently); a job_uuid taken; cancelling a job that has ended
CONFLICTING = {"/v1/vector-dbs", "/v1/datasets", "/v1/post-training/supervised-fine-tune",
               "/v1/post-training/preference-optimize", "/v1/post-training/job/cancel", "/v1/scoring-functions",
               "/v1/eval/benchmarks"}
# (path, method) of other 409s: an eval job cancelled after it ended, its result asked for before it completed
CONFLICTING_OPS = {("/v1/eval/benchmarks/{benchmark_id}/jobs/{job_id}", "delete"),
                   ("/v1/eval/benchmarks/{benchmark_id}/jobs/{job_id}/result", "get")}
REASONS = {
    400: "Bad request: invalid JSON, a field of the wrong type or value (param names it)",
    401: "Missing or invalid API key (when the server has one)",
    404: "Unknown model, shield or resource; the message lists what exists",
    408: "The request body did not arrive within server.body_timeout",
    409: "The resource exists already (a dataset id, a job_uuid, a benchmark or scoring function id; a vector DB "
         "with another embedding model), a job to cancel has ended, or an eval job's result is not ready",
    413: "The request body is over server.max_request_bytes (an uploaded file: over rag.max_file_bytes)",
    415: "The request body is not JSON (Content-Type must be application/json; file uploads: multipart/form-data)",
    429: "The model's queue is full (limits.max_waiting_requests / max_queued_tokens); see Retry-After",
    500: "An internal error (for one request: the engine failed it); the server log has the details",
    502: "A shield model answered something it should not",
    503: "The server is shutting down (draining); see Retry-After",
    504: "The request ran past limits.request_timeout",
}


def _error(status: int) -> dict[str, Any]:
    return {"description": REASONS[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _statuses(path: str, method: str, op: dict[str, Any]) -> list[int]:
    body = "requestBody" in op
    params = bool(op.get("parameters"))
    out = [500, 503]
    if path not in OPEN:
        out.append(401)
    if body or params:
        out.append(400)
    if body:
        out += [408, 413, 415]
    ids = any(x.get("in") == "query" and str(x.get("name", "")).endswith(("_id", "_uuid"))
              for x in op.get("parameters", ()))
    if body or "{" in path or ids:  # a resource named in the path, the body or an `..._id` query parameter
        out.append(404)
    if path in CONFLICTING and method == "post" or (path, method) in CONFLICTING_OPS:
        out.append(409)
    if path in GENERATING and method == "post":
        out += [429, 504]
    if path in SHIELDED and method == "post":
        out.append(502)
    return sorted(out)


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI schema, built once, with Herd's statuses and error shape."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            for status in _statuses(path, method, op):
                responses.setdefault(str(status), _error(status))
            if path in STREAMING and method == "post":
                ok = responses.setdefault("200", {"description": "Successful Response"})
                ok.setdefault("content", {})["text/event-stream"] = {"schema": SSE_EVENT}
    app.openapi_schema = schema
    return schema
