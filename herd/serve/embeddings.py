"""The embedding APIs (OpenAI `POST /v1/embeddings`, Llama Stack `POST /v1/inference/embeddings`) over the
in-process sentence encoder (herd/model/bert.py)."""
from __future__ import annotations

import asyncio
import base64
from typing import Any, Literal

import numpy as np

from herd.errors import HerdError
from herd.model.bert import SentenceEncoder
from herd.serve import protocol as p
from herd.serve.errors import bad_request
from herd.serve.generation import CallContext
from herd.serve.models import ModelRegistry

# ---- the APIs ------------------------------------------------------------------------------


def texts_from_input(raw: Any, param: str) -> list[str]:
    """The texts of an OpenAI `input` / Llama Stack `contents` value; token ids and images are 400s."""
    items = [raw] if isinstance(raw, (str, dict)) else raw
    if not isinstance(items, list) or not items:
        raise bad_request(f"{param} must be a non-empty string or list of strings", param)
    texts = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
            item = item["text"]
        if isinstance(item, (int, list)):
            raise bad_request(f"{param}[{i}]: token-id input is not supported; send text", param)
        if not isinstance(item, str):
            raise bad_request(f"{param}[{i}] must be a string or {{'type': 'text', 'text': str}}", param)
        if not item:
            raise bad_request(f"{param}[{i}] is an empty string", param)
        texts.append(item)
    return texts


def check_dimensions(encoder: SentenceEncoder, dims: int | None, param: str) -> None:
    """Only the model's own dimension is allowed (all-MiniLM-L6-v2 is not a Matryoshka model)."""
    if dims is not None and dims != encoder.dim:
        raise bad_request(f"{param}: this model only produces {encoder.dim}-dimensional embeddings", param)


async def embed(encoder: SentenceEncoder, texts: list[str], truncation: Literal["none", "start", "end"] = "end",
                param: str = "input") -> tuple[np.ndarray, int]:
    """(embeddings, token count), tokenized and computed off the event loop."""
    def work() -> tuple[np.ndarray, int]:
        ids = encoder.tokenize(texts, truncation, param)
        return encoder.encode_ids(ids), sum(len(x) for x in ids)

    try:
        return await asyncio.to_thread(work)
    except HerdError as e:
        raise bad_request(str(e), e.param or param, "context_length_exceeded") from None


def encode_vector(v: np.ndarray, fmt: str) -> list[float] | str:
    """A float list, or base64 of little-endian float32 (what the openai client decodes)."""
    if fmt == "base64":
        return base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
    return v.astype(np.float32).tolist()


async def openai_embeddings(req: p.EmbeddingRequest, registry: ModelRegistry, ctx: CallContext) -> dict[str, Any]:
    """POST /v1/embeddings."""
    model = registry.embedding(req.model)
    check_dimensions(model.encoder, req.dimensions, "dimensions")
    texts = texts_from_input(req.input, "input")
    ctx.cap(len(texts), "max_embedding_inputs", "input", "inputs")
    vectors, tokens = await embed(model.encoder, texts, "none")  # too long is a 400, as OpenAI answers
    ctx.metrics.embedding_inputs.inc(len(texts), model=model.id)
    data = [p.EmbeddingData(index=i, embedding=encode_vector(v, req.encoding_format)) for i, v in enumerate(vectors)]
    return p.dump(p.EmbeddingList(data=data, model=model.id,
                                  usage=p.Usage(prompt_tokens=tokens, total_tokens=tokens)))


async def stack_embeddings(req: p.StackEmbeddingsRequest, registry: ModelRegistry, ctx: CallContext) -> dict[str, Any]:
    """POST /v1/inference/embeddings."""
    model = registry.embedding(req.model_id, "model_id")
    check_dimensions(model.encoder, req.output_dimension, "output_dimension")
    texts = texts_from_input(req.contents, "contents")
    ctx.cap(len(texts), "max_embedding_inputs", "contents", "inputs")
    # text_truncation omitted or null means "none", as Llama Stack defines it: too long is a 400
    vectors, _ = await embed(model.encoder, texts, req.text_truncation or "none", "contents")
    ctx.metrics.embedding_inputs.inc(len(texts), model=model.id)
    return p.dump(p.StackEmbeddingsResponse(embeddings=vectors.tolist()))
