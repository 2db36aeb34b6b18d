"""`builtin::wolfram_alpha`: the `wolfram_alpha` tool (a Llama 3.1 built-in).

With a key (`WOLFRAM_ALPHA_API_KEY`) it asks the Wolfram|Alpha v2 query API (`output=json`) and returns
the plain-text pods ("Input interpretation: ...", "Result: ..."). Without one it falls back to what can
be computed exactly offline — arithmetic, algebra, calculus, unit conversion — by sympy and pint
(herd/tools/offline_math.py, run in a child process with a time and memory limit) and says so in the
result; a query the fallback cannot do is an error result saying why. Failures (no network, a refused
key, a query Wolfram|Alpha did not understand) are error results, never exceptions.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from herd.tools.base import Tool, ToolResult

TOOL_NAME = "wolfram_alpha"
GROUP_ID = "builtin::wolfram_alpha"
OFFLINE_TIMEOUT = 20.0  # seconds for one offline computation (sympy can run forever on some integrals)
OFFLINE_MEMORY = 2 * 2**30  # address-space limit of the offline child process
MAX_QUERY_CHARS = 2000


async def compute_offline(query: str, timeout: float = OFFLINE_TIMEOUT) -> dict[str, Any]:
    """offline_math.compute in a child process: its JSON answer, or {"ok": False, "error"} on a timeout."""
    root = str(Path(__file__).resolve().parents[2])  # herd importable in the child when run from a checkout
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # the child sets its own memory limit first thing (no preexec_fn: unsafe in a threaded server)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "herd.tools.offline_math", "--memory", str(OFFLINE_MEMORY),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    try:
        out, err = await asyncio.wait_for(proc.communicate(query.encode()), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return {"ok": False, "error": f"the offline computation took longer than {timeout:g} s and was stopped",
                "timeout": True}
    try:
        return json.loads(out)
    except ValueError:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        return {"ok": False, "error": f"the offline computation failed: {tail[0][:300]}"}


def _pods_text(result: dict[str, Any]) -> tuple[str, list[dict[str, str]]]:
    """The plain-text pods of a v2 queryresult as 'Title: text' lines, and as a list."""
    pods = []
    for pod in result.get("pods") or []:
        texts = [str(s.get("plaintext")).strip() for s in pod.get("subpods") or []
                 if isinstance(s, dict) and s.get("plaintext")]
        if texts:
            pods.append({"title": str(pod.get("title", "")), "text": "\n".join(texts)})
    return "\n".join(f"{p['title']}: {p['text']}" for p in pods), pods


class WolframAlphaGroup:
    """`builtin::wolfram_alpha`: one tool, `wolfram_alpha(query)`."""

    id = GROUP_ID

    def __init__(self, api_key: str | None = None, base_url: str = "https://api.wolframalpha.com",
                 *, timeout: float = 30.0, offline_timeout: float = OFFLINE_TIMEOUT) -> None:
        self.api_key, self.base_url = api_key or None, base_url.rstrip("/")
        self.timeout, self.offline_timeout = timeout, offline_timeout

    @property
    def provider_id(self) -> str:
        return "wolfram-alpha" if self.api_key else "offline-math"

    def list_tools(self) -> list[Tool]:
        how = "" if self.api_key else (" (no Wolfram|Alpha key here: computed offline, exact arithmetic, algebra, "
                                       "calculus and unit conversion only)")
        return [Tool(TOOL_NAME, "Ask Wolfram|Alpha a math, science or unit question, e.g. 'integrate x^2 sin(x) "
                     "dx', 'solve x^2-4=0', 'convert 5 miles to km'" + how + ".",
                     {"type": "object", "properties": {"query": {"type": "string", "minLength": 1,
                                                                 "description": "The question, in plain words"}},
                      "required": ["query"]},
                     toolgroup_id=self.id, provider_id=self.provider_id,
                     metadata={"backend": "wolfram_alpha" if self.api_key else "sympy"})]

    async def invoke(self, tool_name: str, kwargs: dict[str, Any], *, session_id: str | None = None) -> ToolResult:
        query = str(kwargs.get("query", "")).strip()
        if not query:
            return ToolResult.error("wolfram_alpha: the query is empty", code=1)
        if len(query) > MAX_QUERY_CHARS:
            return ToolResult.error(f"wolfram_alpha: the query is too long ({len(query)} characters; at most "
                                    f"{MAX_QUERY_CHARS})", code=1)
        if self.api_key:
            return await self._ask_api(query)
        return await self._offline(query)

    async def _offline(self, query: str) -> ToolResult:
        answer = await compute_offline(query, self.offline_timeout)
        if not answer.get("ok"):
            return ToolResult.error(f"wolfram_alpha (offline, no Wolfram|Alpha key): {answer.get('error')}",
                                    backend="sympy")
        note = answer.pop("note", "computed offline; no Wolfram|Alpha key")
        text = f"{answer.pop('text')}\n({note})"
        answer.pop("ok", None)
        return ToolResult(text, metadata={"backend": "sympy" if "sympy" in note else "pint", **answer})

    async def _ask_api(self, query: str) -> ToolResult:
        import httpx

        url = f"{self.base_url}/v2/query"
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                r = await client.get(url, params={"input": query, "appid": self.api_key, "output": "json",
                                                  "format": "plaintext"})
        except httpx.HTTPError as e:
            return ToolResult.error(f"wolfram_alpha: cannot reach {url}: {type(e).__name__}: {e}".rstrip(": "),
                                    backend="wolfram_alpha")
        if r.status_code >= 400:
            why = {401: "the app id was refused", 403: "the app id was refused",
                   429: "rate limited; try again later"}.get(r.status_code, r.text[:200].strip())
            return ToolResult.error(f"wolfram_alpha: HTTP {r.status_code} ({why})", backend="wolfram_alpha",
                                    status=r.status_code)
        try:
            result = r.json()["queryresult"]
        except (ValueError, KeyError, TypeError):
            return ToolResult.error("wolfram_alpha: the answer is not a v2 queryresult", backend="wolfram_alpha")
        error = result.get("error")
        if isinstance(error, dict):  # an invalid app id comes back as 200 with queryresult.error
            return ToolResult.error(f"wolfram_alpha: error {error.get('code')}: {error.get('msg')}",
                                    backend="wolfram_alpha")
        text, pods = _pods_text(result)
        if not result.get("success") or not text:
            tips = [str(d.get("val")) for d in _as_list(result.get("didyoumeans")) if isinstance(d, dict)]
            hint = f" (did you mean: {', '.join(tips)}?)" if tips else ""
            return ToolResult.error(f"wolfram_alpha did not understand {query!r}{hint}", backend="wolfram_alpha")
        return ToolResult(text, metadata={"backend": "wolfram_alpha", "pods": pods})

    async def end_session(self, session_id: str) -> None:
        return None

    async def close(self) -> None:
        return None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
