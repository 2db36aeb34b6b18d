"""`OpenAIGenerator`: the `Generator` protocol (herd/generator.py) over any OpenAI-compatible
`/v1/chat/completions` endpoint — another `herd serve`, vLLM, llama.cpp's server, OpenAI itself — so that
rejection sampling, evaluation and data generation can run against a model in another process.

    gen = OpenAIGenerator("http://127.0.0.1:8321/v1", "smollm2-135m-instruct")
    result = await complete(gen, ChatRequest([Message("user", "Hi")], temperature=0.7))

One request per turn (not streamed: callers here want whole replies); the reply's text and tool calls
come back as a herd `Message`. HTTP failures are HerdErrors naming the URL and the status.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from herd.errors import HerdError
from herd.generator import ChatDelta, ChatRequest
from herd.tokenizer.messages import Message, ToolCall


class OpenAIGenerator:
    """Chat turns from an OpenAI-compatible server."""

    prompt_format = None  # the server renders prompts in its own way

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 600.0,
                 client: Any = None) -> None:
        import httpx

        self.model_id = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.AsyncClient(timeout=timeout, headers=headers)

    def body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model_id, "messages": [m.to_openai() for m in request.messages]}
        if request.tools:
            body["tools"] = [{"type": "function", "function": {"name": t.tool_name, "description": t.description,
                                                               "parameters": t.parameters}} for t in request.tools]
            if request.tool_choice in ("auto", "none", "required"):
                body["tool_choice"] = request.tool_choice
            else:
                body["tool_choice"] = {"type": "function", "function": {"name": request.tool_choice}}
            if not request.parallel_tool_calls:
                body["parallel_tool_calls"] = False
        for key in ("max_tokens", "temperature", "top_p", "seed", "stop", "response_format"):
            value = getattr(request, key)
            if value is not None:
                body[key] = value
        return body

    async def chat(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        import httpx

        try:
            r = await self._client.post(self.url, json=self.body(request))
        except httpx.HTTPError as e:
            raise HerdError(f"{self.url}: {type(e).__name__}: {e}") from None
        if r.status_code != 200:
            try:
                detail = r.json().get("error", {}).get("message") or r.text
            except ValueError:
                detail = r.text
            raise HerdError(f"{self.url} answered {r.status_code}: {str(detail)[:300]}")
        data = r.json()
        choice = data["choices"][0]
        msg = choice.get("message") or {}
        calls = []
        for i, c in enumerate(msg.get("tool_calls") or []):
            fn = c.get("function") or {}
            try:
                args = json.loads(fn.get("arguments") or "{}")
            except json.JSONDecodeError:
                args = {"__raw__": fn.get("arguments")}
            calls.append(ToolCall(c.get("id") or f"call_{i}", fn.get("name", ""), args if isinstance(args, dict)
                                  else {"__raw__": args}))
        message = Message("assistant", msg.get("content") or "", calls)
        usage = data.get("usage") or {}
        yield ChatDelta(text=message.content, tool_calls=calls, done=True, message=message,
                        finish_reason=choice.get("finish_reason") or "stop",
                        prompt_tokens=int(usage.get("prompt_tokens") or 0),
                        completion_tokens=int(usage.get("completion_tokens") or 0))

    async def aclose(self) -> None:
        await self._client.aclose()
