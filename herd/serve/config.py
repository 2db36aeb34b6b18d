"""Server configuration: frozen dataclasses, read from YAML with `${env.VAR:=default}` substitution.

```yaml
server: {host: 127.0.0.1, port: 8321, api_keys: ["${env.HERD_API_KEY}"], max_request_bytes: 8388608}
limits: {max_waiting_requests: 128, request_timeout: 600}   # back-pressure: see LimitSettings
models:
  - id: smollm2                       # what clients send as `model`
    model: smollm2-135m-instruct      # any model reference (directory, .gguf, built-in, random:<preset>)
    engine: {num_blocks: 1024, max_num_seqs: 32}
    input_shields: [llama-guard]      # chat requests to this model are screened (requests may add more)
    output_shields: [code-shield]
  - {id: all-MiniLM-L6-v2, type: embedding}
shields:                              # passed to herd.safety (see `herd shield --help`)
  - {shield_id: llama-guard, type: llama-guard, model: ./Llama-Guard-3-1B}
tools:                                # the tool runtime: web search, Wolfram|Alpha, code interpreter, MCP
  search_corpus: ./docs               # offline web_search over these files when no search API key is set
  mcp_servers: [{toolgroup_id: mcp::files, command: npx, args: [-y, "@modelcontextprotocol/server-filesystem"]}]
rag: {max_file_bytes: 67108864}       # files and vector stores: <herd_home>/rag (path:), embedding_model:
```
Unknown keys are errors naming their path; values are converted to the field's type.
"""
from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from herd.config import EngineConfig
from herd.errors import HerdError
from herd.rag.settings import RagSettings
from herd.tools.builtin import ToolSettings

DEFAULT_PORT = 8321
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
ModelType = Literal["llm", "embedding"]


@dataclass(frozen=True)
class ModelSpec:
    """One served model: the id clients use and the reference it loads from."""

    id: str
    model: str | None = None  # model reference; None: the id is the reference
    type: ModelType = "llm"
    dtype: str | None = None  # float32 / bfloat16 / float16; None: by device
    # weight-only quantization (herd/model/quantize.py); "none": the weights as loaded
    quantize: Literal["none", "bf16", "int8", "int4"] = "none"
    device: str | None = None
    seed: int = 0  # random:<preset> weights
    lora: str | None = None  # a PEFT LoRA adapter directory merged into the weights at load
    tool_prompt_format: Literal["json", "function_tag", "python_list"] = "json"
    aliases: tuple[str, ...] = ()  # other names that resolve to this model
    engine: EngineConfig = field(default_factory=EngineConfig)
    input_shields: tuple[str, ...] = ()  # shield ids screening every chat request's messages
    output_shields: tuple[str, ...] = ()  # shield ids screening every chat reply before it is released

    @property
    def ref(self) -> str:
        """The model reference to load."""
        return self.model or self.id


@dataclass(frozen=True)
class ServerSettings:
    """Network and operations settings."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_keys: tuple[str, ...] = ()  # Bearer keys; empty: no auth
    max_request_bytes: int = 8 * 2**20  # larger bodies get 413
    drain_timeout: float = 30.0  # seconds SIGINT/SIGTERM waits for in-flight requests
    access_log: bool = True  # one JSON line per request on stderr
    log_level: str = "info"
    # connections (slow or stalled clients; see SECURITY.md)
    header_timeout: float = 10.0  # seconds a connection has to send a request's headers; then 408 / closed
    body_timeout: float = 30.0  # seconds to receive a request's body once its headers are in; then 408
    keep_alive_timeout: float = 5.0  # idle seconds before a kept-alive connection is closed
    max_header_bytes: int = 16384  # a larger request line + headers gets 431
    max_connections: int = 1024  # open connections beyond this get 503
    # browser origins allowed to call the API (CORS); empty: no CORS headers, browsers refuse
    cors_origins: tuple[str, ...] = ()
    # stored chat completions (GET /v1/chat/completions): "requested" (store: true, as OpenAI),
    # "all" (every chat completion, as Llama Stack 0.2) or "off"
    store_chat_completions: Literal["requested", "all", "off"] = "requested"

    def __post_init__(self) -> None:
        for name in ("header_timeout", "body_timeout", "keep_alive_timeout", "drain_timeout"):
            if getattr(self, name) <= 0:
                raise HerdError(f"server.{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.max_header_bytes < 1024 or self.max_connections < 1 or self.max_request_bytes < 1:
            raise HerdError("server.max_header_bytes must be >= 1024, max_connections and max_request_bytes >= 1")


@dataclass(frozen=True)
class LimitSettings:
    """Back-pressure and per-request caps: a flood gets 429s instead of an unbounded queue, and one
    request cannot hold the engine for everyone (README: Limits)."""

    # per model: requests that have not produced a token yet, and their prompt tokens; beyond: 429
    max_waiting_requests: int = 128
    max_queued_tokens: int = 262144
    retry_after: float = 1.0  # seconds, sent as Retry-After with 429 (and 503 while draining)
    request_timeout: float = 600.0  # seconds from arrival to the last token (0: none); then 504
    max_sequences_in_flight: int = 16  # one request's sequences in the engine at once (prompt lists x n)
    max_sequences_per_request: int = 256  # prompts x n of one request; beyond: 400
    max_completion_prompts: int = 128  # prompts in one /v1/completions list; beyond: 400
    max_embedding_inputs: int = 2048  # texts in one embeddings request; beyond: 400
    max_stop_strings: int = 16  # stop strings of one request; beyond: 400

    def __post_init__(self) -> None:
        ints = ("max_waiting_requests", "max_queued_tokens", "max_sequences_in_flight", "max_sequences_per_request",
                "max_completion_prompts", "max_embedding_inputs", "max_stop_strings")
        for name in ints:
            if getattr(self, name) < 1:
                raise HerdError(f"limits.{name} must be >= 1, got {getattr(self, name)}")
        if self.retry_after <= 0 or self.request_timeout < 0:
            raise HerdError("limits.retry_after must be > 0 and limits.request_timeout >= 0 (0: no timeout)")


@dataclass(frozen=True)
class ServerConfig:
    """Everything `herd serve` runs with."""

    server: ServerSettings = field(default_factory=ServerSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    models: tuple[ModelSpec, ...] = ()
    shields: tuple[dict[str, Any], ...] = ()  # raw entries for herd.safety
    tools: ToolSettings = field(default_factory=ToolSettings)  # the tool runtime (herd/tools/builtin.py)
    rag: RagSettings = field(default_factory=RagSettings)  # files and vector stores (herd/rag)

    @property
    def llm_specs(self) -> list[ModelSpec]:
        return [m for m in self.models if m.type == "llm"]


# ---- ${env.VAR} substitution ---------------------------------------------------------------

_ENV = re.compile(r"\$\{env\.(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:=|:\+)(?P<arg>[^}]*))?\}")


def substitute_env(value: Any, environ: typing.Mapping[str, str] | None = None) -> Any:
    """Replace `${env.VAR}`, `${env.VAR:=default}` and `${env.VAR:+if_set}` in every string."""
    env = os.environ if environ is None else environ
    if isinstance(value, dict):
        return {k: substitute_env(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def repl(m: re.Match[str]) -> str:
        name, op, arg = m.group("name"), m.group("op"), m.group("arg") or ""
        current = env.get(name)
        if op == ":=":
            return current if current else arg
        if op == ":+":
            return arg if current else ""
        if current is None:
            raise HerdError(f"environment variable {name} is not set (write ${{env.{name}:=default}} for a default)")
        return current

    return _ENV.sub(repl, value)


# ---- typed conversion of plain YAML data into the dataclasses ------------------------------


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if (value is None or value == "") and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _convert(value, opt, where)
            except HerdError as e:
                errors.append(str(e))
        raise HerdError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        if value is False and "off" in typing.get_args(tp):  # YAML 1.1 reads a bare `off` as false
            return "off"
        if value not in typing.get_args(tp):
            raise HerdError(f"{where}: expected one of {', '.join(map(str, typing.get_args(tp)))}, got {value!r}")
        return value
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        if isinstance(value, str):
            value = [value] if value else []
        if not isinstance(value, list):
            raise HerdError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_convert(v, inner, f"{where}[{i}]") for i, v in enumerate(value) if v not in ("", None))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise HerdError(f"{where}: expected a mapping, got {type(value).__name__}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise HerdError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise HerdError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)) and (tp is float or float(value).is_integer()):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value.strip())
            except ValueError:
                pass
        raise HerdError(f"{where}: expected {'an integer' if tp is int else 'a number'}, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise HerdError(f"{where}: expected a string, got {type(value).__name__}")
    return value


def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types are HerdErrors naming `where`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise HerdError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise HerdError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(fields)}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except HerdError as e:
        raise HerdError(f"{where}: {e}") from None
    except TypeError as e:
        raise HerdError(f"{where}: {e}") from None


def parse_config(data: Any) -> ServerConfig:
    """A ServerConfig from parsed YAML (after env substitution)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise HerdError("config: expected a mapping with server/models/shields")
    data = dict(data)
    data.pop("version", None)
    models = data.get("models") or []
    if not isinstance(models, list):
        raise HerdError("models: expected a list of {id, model, ...}")
    for i, m in enumerate(models):  # a bare string is a model reference
        if isinstance(m, str):
            models[i] = {"id": m}
    data["models"] = models
    cfg = from_dict(ServerConfig, data, "")
    check_ids(cfg.models)
    check_model_shields(cfg)
    return cfg


def check_model_shields(cfg: ServerConfig) -> None:
    """Per-model input/output shields must name shields of the config (or the built-in code-shield)."""
    used = [(i, m, kind, sid) for i, m in enumerate(cfg.models) for kind in ("input_shields", "output_shields")
            for sid in getattr(m, kind)]
    if not used:
        return
    try:
        from herd.safety.shields import ShieldRegistry
    except ImportError:  # the safety layer is optional
        raise HerdError("models: input_shields/output_shields need herd.safety, which is not installed") from None
    available = ShieldRegistry.from_config(list(cfg.shields)).ids()
    for i, m, kind, sid in used:
        if m.type != "llm":
            raise HerdError(f"models[{i}].{kind}: only chat models (type llm) take shields; {m.id!r} is {m.type}")
        if sid not in available:
            raise HerdError(f"models[{i}].{kind}: shield {sid!r} is not declared; available shields: "
                            f"{', '.join(available) or '(none)'} (declare it under shields:)")


def load_config(path: str | Path, environ: typing.Mapping[str, str] | None = None) -> ServerConfig:
    """Read a YAML server config file."""
    import yaml

    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise HerdError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise HerdError(f"{path}: not valid YAML ({e})") from None
    try:
        return parse_config(substitute_env(raw, environ))
    except HerdError as e:
        raise HerdError(f"{path}: {e}") from None


def check_ids(models: typing.Sequence[ModelSpec]) -> None:
    """Model ids and aliases must be unique."""
    seen: set[str] = set()
    for m in models:
        for name in (m.id, *m.aliases):
            if name in seen:
                raise HerdError(f"model id {name!r} is used twice")
            seen.add(name)


def spec_from_arg(arg: str) -> ModelSpec:
    """`--model REF` or `--model ID=REF` (an existing path containing '=' is a REF)."""
    ident, sep, ref = arg.partition("=")
    if sep and ident and ref and not Path(arg).expanduser().exists():
        return ModelSpec(id=ident, model=ref)
    return ModelSpec(id=default_id(arg), model=arg)


def default_id(ref: str) -> str:
    """The id a model is served under when none is given: built-in names as is, paths by their name."""
    if ref.startswith("random:") or "/" not in ref and "\\" not in ref and not ref.endswith(".gguf"):
        return ref
    name = Path(ref.rstrip("/\\")).name
    return name.removesuffix(".gguf") or ref
