"""Herd: the Llama 3.1 system in one package.

    from herd import LLM, SamplingParams
    llm = LLM()  # the embedded SmolLM2-135M-Instruct, or a path / random:<preset>
    print(llm.chat([{"role": "user", "content": "Hi!"}]).message.content)
"""
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "LLM": "herd.llm",
    "ChatResponse": "herd.llm",
    "LLMEngine": "herd.engine.engine",
    "AsyncLLMEngine": "herd.engine.async_engine",
    "SamplingParams": "herd.engine.request",
    "RequestOutput": "herd.engine.request",
    "CompletionOutput": "herd.engine.request",
    "EngineConfig": "herd.config",
    "ModelArgs": "herd.config",
    "PRESETS": "herd.config",
    "HerdError": "herd.errors",
    "Tokenizer": "herd.tokenizer.tokenizer",
    "load_tokenizer": "herd.tokenizer.tokenizer",
    "ChatFormat": "herd.tokenizer.chat_format",
    "Message": "herd.tokenizer.messages",
    "ToolCall": "herd.tokenizer.messages",
    "ToolDefinition": "herd.tokenizer.messages",
    "to_messages": "herd.tokenizer.messages",
    "Transformer": "herd.model.llama",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    # lazy: `import herd` stays cheap (the CLI's --help must not load torch)
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'herd' has no attribute {name!r}")
