"""Structured output: response_format (JSON schema, JSON object, regex, choice, grammar) as a token mask.

Grammars are compiled by llguidance (Rust, no Python dependencies, masks in ~0.1 ms); a mask is a
packed int32 bitmask row of ceil(n_words / 32) words, bit j of word w allowing token 32 * w + j.
Per step: `fill_mask`/`fill_masks` on the CPU, then `apply_masks` on the logits' device.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import llguidance as llg
import numpy as np
import torch

from herd.errors import HerdError
from herd.tokenizer.tokenizer import Tokenizer

FormatType = Literal["text", "json_object", "json_schema", "regex", "choice", "grammar"]
_TYPES: tuple[str, ...] = FormatType.__args__  # type: ignore[attr-defined]
# One line, json.dumps-style separators and no free whitespace: small models given free whitespace
# can emit newlines forever, and a fixed layout keeps every sampled token on content.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_MAX_CACHED = 256


@dataclass(frozen=True)
class ResponseFormat:
    """What shape the output must take; `text` means unconstrained."""

    type: FormatType = "text"
    schema: dict[str, Any] | None = None  # json_schema
    pattern: str | None = None  # regex
    choices: tuple[str, ...] = ()  # choice
    grammar: str | None = None  # grammar: GBNF (llama.cpp) or Lark text

    def key(self) -> str:
        """A stable cache key (the schema dict makes the dataclass itself unhashable)."""
        return json.dumps([self.type, self.schema, self.pattern, list(self.choices), self.grammar], sort_keys=True)

    @classmethod
    def from_openai(cls, obj: Any) -> ResponseFormat:
        """Parse an OpenAI / Llama Stack / herd `response_format` object; bad input is a HerdError."""
        where = "response_format"
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            raise HerdError(f"{where}: expected an object like {{\"type\": \"json_object\"}}")
        kind = obj.get("type")
        if kind not in _TYPES:
            raise HerdError(f"{where}.type: expected one of {', '.join(_TYPES)} (got {kind!r})")
        if kind in ("text", "json_object"):
            return cls(kind)
        if kind == "json_schema":
            js = obj.get("json_schema", obj.get("schema"))
            if not isinstance(js, dict):
                raise HerdError(f"{where}.json_schema: expected an object with a 'schema'")
            if "schema" in js:  # OpenAI: {"name", "schema", "strict"}; else Llama Stack: the schema itself
                schema = js["schema"]
                if not isinstance(schema, dict):
                    raise HerdError(f"{where}.json_schema.schema: expected a JSON schema object")
            elif set(js) <= {"name", "description", "strict"}:
                return cls("json_object")  # OpenAI allows a schema-less json_schema: any JSON object
            else:
                schema = js
            return cls("json_schema", schema=schema)
        if kind == "regex":
            pattern = obj.get("pattern", obj.get("regex"))
            if not isinstance(pattern, str) or not pattern:
                raise HerdError(f"{where}.pattern: expected a non-empty regular expression string")
            return cls("regex", pattern=pattern)
        if kind == "choice":
            choices = obj.get("choices")
            if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
                raise HerdError(f"{where}.choices: expected a non-empty list of non-empty strings")
            return cls("choice", choices=tuple(choices))
        text = obj.get("grammar", obj.get("bnf"))
        if isinstance(text, dict):  # Llama Stack: {"bnf": {"grammar": "..."}} or {"root": "..."}
            text = next((text[k] for k in ("grammar", "root", "value") if isinstance(text.get(k), str)), None)
        if not isinstance(text, str) or not text.strip():
            raise HerdError(f"{where}.grammar: expected GBNF or Lark grammar text (in 'grammar' or 'bnf')")
        return cls("grammar", grammar=text)


# ---- schemas that cannot be compiled ------------------------------------------------------

# Python type names tool authors write for JSON schema ones (BFCL's data uses several of them)
_TYPE_ALIASES = {"float": "number", "double": "number", "int": "integer", "long": "integer", "dict": "object",
                 "tuple": "array", "list": "array", "bool": "boolean", "str": "string", "any": None}
# keywords dropped, one at a time in this order, from a sub-schema that does not compile
_DROPPABLE = ("format", "pattern", "enum", "const", "minLength", "maxLength", "minimum", "maximum",
              "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minItems", "maxItems", "uniqueItems",
              "minProperties", "maxProperties", "required", "additionalProperties", "items", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_ONE = ("items", "additionalProperties", "not", "contains")


def schema_problem(schema: Any) -> str | None:
    """Why llguidance cannot compile `schema` as a JSON schema grammar (first line), or None if it can."""
    try:
        grammar = llg.LLMatcher.grammar_from_json_schema(schema, overrides=_JSON_OPTIONS)
        err = llg.LLMatcher.validate_grammar(grammar)
    except (ValueError, TypeError, RuntimeError) as e:
        err = str(e)
    return _first_line(err) if err else None


def _has_ref(node: Any) -> bool:
    if isinstance(node, dict):
        return "$ref" in node or any(_has_ref(v) for v in node.values())
    return isinstance(node, list) and any(_has_ref(v) for v in node)


def _subschemas(node: dict[str, Any]) -> list[tuple[str, dict[str, Any], Any]]:
    """(path suffix, container, key) of each direct sub-schema of `node`."""
    out: list[tuple[str, dict[str, Any], Any]] = []
    for key in _SUBSCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            out += [(f".{key}.{k}", node[key], k) for k, v in node[key].items() if isinstance(v, dict)]
    for key in _SUBSCHEMA_LISTS:
        if isinstance(node.get(key), list):
            out += [(f".{key}[{i}]", node[key], i) for i, v in enumerate(node[key]) if isinstance(v, dict)]
    out += [(f".{key}", node, key) for key in _SUBSCHEMA_ONE if isinstance(node.get(key), dict)]
    return out


def _relax(node: dict[str, Any], path: str, notes: list[str]) -> dict[str, Any]:
    """`node` (already a copy) with its sub-schemas relaxed first, then itself: type aliases read as JSON
    schema types, then keywords dropped one at a time until it compiles, else any value ({})."""
    for suffix, container, key in _subschemas(node):
        container[key] = _relax(container[key], path + suffix, notes)
    if _has_ref(node):  # a $ref cannot be checked apart from its root: the whole-schema check decides
        return node
    problem = schema_problem(node)
    if problem is None:
        return node
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if any(isinstance(k, str) and k in _TYPE_ALIASES for k in kinds):
        mapped = [_TYPE_ALIASES.get(k, k) if isinstance(k, str) else k for k in kinds]
        if None in mapped:
            node.pop("type")
        else:
            node["type"] = mapped if isinstance(kind, list) else mapped[0]
        notes.append(f"{path}: type {kind!r} read as {node.get('type', 'any value')!r}")
        if (problem := schema_problem(node)) is None:
            return node
    for key in _DROPPABLE:
        if key in node:
            node.pop(key)
            notes.append(f"{path}: dropped {key!r} ({problem})")
            if (problem := schema_problem(node)) is None:
                return node
    notes.append(f"{path}: accepted as any JSON value ({problem})")
    return {"description": node["description"]} if isinstance(node.get("description"), str) else {}


def satisfiable_schema(schema: dict[str, Any], where: str = "schema") -> tuple[dict[str, Any], list[str]]:
    """`schema`, or the nearest schema llguidance compiles, and one note per change (empty: unchanged).

    A sub-schema that does not compile (an unknown type such as "float", `enum` on an array, a regex with
    look-around, an unknown format) is relaxed, innermost first: aliases of JSON types are read as
    those types, then the offending keywords are dropped one by one, and as a last resort the
    sub-schema accepts any value. A whole schema still failing then (through `$ref`) becomes any object.
    """
    if schema_problem(schema) is None:
        return schema, []
    notes: list[str] = []
    relaxed = _relax(json.loads(json.dumps(schema)), where, notes)
    if (problem := schema_problem(relaxed)) is not None:
        notes.append(f"{where}: accepted as any JSON object ({problem})")
        relaxed = {"type": "object"}
    return relaxed, notes


class _VocabForLLG:
    """Our tokenizer in the shape llguidance.TokenizerWrapper reads: token bytes, eos, specials, encode."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tok = tokenizer
        self.eos_token_id = tokenizer.eos_id
        self.bos_token_id = tokenizer.bos_id
        self.special_token_ids = sorted(set(tokenizer.special_tokens.values()))
        self.tokens = [self._bytes(i) for i in range(tokenizer.n_words)]

    def _bytes(self, i: int) -> bytes:
        try:
            return self._tok.token_bytes(i)
        except (ValueError, KeyError):
            return b""  # a hole in the id space: llguidance never allows an empty token

    def __call__(self, s: str) -> list[int]:
        if not isinstance(s, str):
            raise TypeError("text only")  # tells TokenizerWrapper to hand us str, not bytes
        return self._tok.encode(s)


class GrammarMatcher:
    """The grammar state of one sequence: mask, accept, rollback."""

    def __init__(self, matcher: llg.LLMatcher, width: int) -> None:
        self._m = matcher
        self.width = width  # int32 words per mask row

    def fill_mask(self, mask: torch.Tensor) -> None:
        """Write the allowed next tokens into `mask`, a contiguous int32 CPU row of `width` words."""
        if mask.dtype != torch.int32 or mask.device.type != "cpu" or not mask.is_contiguous() \
                or mask.numel() != self.width:
            raise ValueError(f"mask must be a contiguous CPU int32 row of {self.width} words")
        # in an error state llguidance writes a stop-tokens-only mask, so the sequence just ends
        self._m.unsafe_compute_mask_ptr(mask.data_ptr(), self.width * 4)

    def accept(self, token_id: int) -> bool:
        """Advance by one sampled token; False (and an error state) if the grammar forbids it."""
        return self._m.consume_token(token_id)

    def is_finished(self) -> bool:
        """The grammar is complete (or failed): only stop tokens are allowed now."""
        return self._m.is_stopped()

    def is_accepting(self) -> bool:
        """The output so far is a complete match (a stop token is allowed, more may be too)."""
        return self._m.is_accepting()

    def rollback(self, n: int) -> bool:
        """Undo the last `n` accepted tokens (speculative decoding, preemption)."""
        return self._m.rollback(n)

    def forced_tokens(self) -> list[int]:
        """Tokens the grammar forces next, which can be appended without sampling."""
        return self._m.compute_ff_tokens()

    @property
    def error(self) -> str | None:
        """Why the matcher failed, or None."""
        return (self._m.get_error() or "failed") if self._m.is_error() else None


class CompiledGrammar:
    """A validated grammar for one tokenizer; makes a fresh matcher per sequence."""

    def __init__(self, template: llg.LLMatcher, width: int) -> None:
        self._template = template
        self._lock = threading.Lock()
        self.width = width

    def matcher(self) -> GrammarMatcher:
        """A matcher at the start of the grammar (a copy of a pristine one: ~10 us, not ~0.5 ms)."""
        with self._lock:
            return GrammarMatcher(self._template.deep_copy(), self.width)


class GrammarCompiler:
    """Compiles response formats for one tokenizer; caches compiled grammars by format."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.n_words
        self.width = (self.vocab_size + 31) // 32
        stops = sorted(tokenizer.stop_ids) or [tokenizer.eos_id]
        # the mask allows every stop id once the grammar is complete: eos, <|eot_id|>, <|im_end|>, ...
        self._lltok = llg.LLTokenizer(llg.TokenizerWrapper(_VocabForLLG(tokenizer)),
                                      n_vocab=self.vocab_size, eos_token=stops)
        self._cache: OrderedDict[str, CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, fmt: ResponseFormat) -> CompiledGrammar | None:
        """The compiled grammar for `fmt` (None for text); an invalid format is a HerdError."""
        if fmt.type == "text":
            return None
        key = fmt.key()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            compiled = self._compile(fmt)
            self._cache[key] = compiled
            if len(self._cache) > _MAX_CACHED:
                self._cache.popitem(last=False)
            return compiled

    def _compile(self, fmt: ResponseFormat) -> CompiledGrammar:
        field = {"json_object": "type", "json_schema": "json_schema.schema", "regex": "pattern",
                 "choice": "choices", "grammar": "grammar"}[fmt.type]
        try:
            if fmt.type == "json_object":
                grammar = llg.LLMatcher.grammar_from_json_schema({"type": "object"}, overrides=_JSON_OPTIONS)
            elif fmt.type == "json_schema":
                grammar = llg.LLMatcher.grammar_from_json_schema(fmt.schema or {}, overrides=_JSON_OPTIONS)
            elif fmt.type == "regex":
                grammar = llg.LLMatcher.grammar_from_regex(fmt.pattern or "")
            elif fmt.type == "choice":
                grammar = llg.grammar_from("choice", json.dumps(list(fmt.choices)))
            else:
                grammar = llg.grammar_from("gbnf", fmt.grammar or "")
        except (ValueError, TypeError) as e:
            raise HerdError(f"response_format.{field}: {_first_line(str(e))}") from None
        try:
            template = llg.LLMatcher(self._lltok, grammar, log_level=0)
        except (ValueError, TypeError, RuntimeError) as e:
            raise HerdError(f"response_format.{field}: {_first_line(str(e))}") from None
        if template.is_error():
            raise HerdError(f"response_format.{field}: {_first_line(template.get_error())}")
        return CompiledGrammar(template, self.width)

    def allocate_masks(self, batch: int) -> torch.Tensor:
        """An all-allowed (batch, width) int32 mask buffer for fill_mask / fill_masks / apply_masks."""
        return torch.full((batch, self.width), -1, dtype=torch.int32)


def _first_line(msg: str) -> str:
    """llguidance errors span lines (source excerpts); keep the headline and its `error:` detail."""
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    if not lines:
        return "invalid"
    detail = next((ln for ln in lines[1:] if ln.startswith("error:")), "")
    return f"{lines[0]} {detail}".strip()


_executor: llg.LLExecutor | None = None
_executor_lock = threading.Lock()


def fill_masks(matchers: Sequence[GrammarMatcher], masks: torch.Tensor) -> None:
    """Fill row i of `masks` for matchers[i], in parallel threads that release the GIL."""
    global _executor
    if not matchers:
        return
    width = matchers[0].width
    if masks.dtype != torch.int32 or masks.device.type != "cpu" or not masks.is_contiguous() \
            or masks.dim() != 2 or masks.shape[1] != width or masks.shape[0] < len(matchers):
        raise ValueError(f"masks must be a contiguous CPU int32 tensor of shape (>= {len(matchers)}, {width})")
    if len(matchers) == 1:  # no thread hand-off for the common batch-of-one case
        matchers[0].fill_mask(masks[0])
        return
    with _executor_lock:
        if _executor is None:
            _executor = llg.LLExecutor()
    _executor.unsafe_compute_mask_ptr([(m._m, i) for i, m in enumerate(matchers)], masks.data_ptr(),
                                      width * 4, masks.shape[0])


_SHIFTS: dict[torch.device, torch.Tensor] = {}


def _unpack_by_shift(packed: torch.Tensor) -> torch.Tensor:
    """(N, W) int32 -> (N, 32 * W) bool on packed's device; >> on int32 is arithmetic, & 1 keeps the bit."""
    shifts = _SHIFTS.get(packed.device)
    if shifts is None:
        shifts = _SHIFTS[packed.device] = torch.arange(32, dtype=torch.int32, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & 1).view(packed.shape[0], -1).bool()


def unpack_masks(masks: torch.Tensor, vocab: int, device: torch.device) -> torch.Tensor:
    """Packed int32 masks (N, W) -> bool (N, vocab) on `device`; ids past 32 * W are disallowed."""
    n, width = masks.shape
    if device.type == "cpu":  # numpy's unpackbits is ~10x faster than shifting on the CPU
        bits = np.unpackbits(masks.contiguous().numpy().view(np.uint8), axis=1, bitorder="little")
        allowed = torch.from_numpy(bits).view(torch.bool)
    else:  # on an accelerator: copy the small packed mask over, unpack there
        allowed = _unpack_by_shift(masks.to(device, non_blocking=True))
    if vocab <= width * 32:
        return allowed[:, :vocab]
    # the model's vocabulary has padding rows past the tokenizer's: never allowed
    return torch.cat([allowed, allowed.new_zeros(n, vocab - width * 32)], dim=1)


def apply_masks(logits: torch.Tensor, masks: torch.Tensor, rows: Sequence[int] | torch.Tensor | None = None) -> None:
    """Set logits[rows[i], t] = -inf wherever masks[i] disallows t, in place; rows=None: row i."""
    n = masks.shape[0] if rows is None else len(rows)
    if n == 0:
        return
    disallowed = unpack_masks(masks[:n], logits.shape[-1], logits.device).logical_not_()
    # rows 0..n-1 in order (the usual case) is a plain slice; a host list is checked without a device sync
    if rows is None or (not isinstance(rows, torch.Tensor) and list(rows) == list(range(n))):
        logits[:n].masked_fill_(disallowed, float("-inf"))
    else:
        idx = torch.as_tensor(rows, dtype=torch.long).to(logits.device, non_blocking=True)
        logits.index_copy_(0, idx, logits.index_select(0, idx).masked_fill_(disallowed, float("-inf")))
