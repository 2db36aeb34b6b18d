"""`herd sdg tools`: synthetic tool-use dialogs for SFT, made by a model through a `Generator`.

    tools = read_tools("tools.json")                  # OpenAI function schemas (a list, or {"tools": [...]})
    stubs = load_stubs("stubs.py")                    # a Python file: one function per tool name
    result = await generate_tool_dialogs(gen, tools, stubs, n=300, seed=0)
    write_jsonl("tools_sft.jsonl", result.dialogs)    # herd train sft --data tools_sft.jsonl

Each dialog is made in up to five model calls: (1) a user request that needs one tool (round-robin over the
tools, with varied persona and wording prompts; the model first invents the call's values through the
grammar, then writes a message asking for them) or, for `no_tool_share` of them, no tool at all; (2) the
call, with the tool named in `tool_choice`, so the engine's JSON-schema grammar makes every call match its
schema (checked again with jsonschema; an endpoint without grammars may fail it, and the dialog is then
dropped and counted), and every required string or number argument must appear in the request (a value
the model made up is not a call to learn) — or, with requests="template" (for small models that write poor
requests), the request is written from the invented values by templates and the invented call is the
call; (3) the result, by running the user's stub implementation with the arguments (a
stub that raises drops the dialog: "checked by execution"); (4) the final answer given the result, which must state at least
one value of the result. The
dialogs are in `herd train`'s chat format: {"messages": [user, assistant tool_calls, tool, assistant],
"tools": [...]}; with `tools_per_dialog` each offers a few tools, and with `unavailable_share` some requests
ask for a tool that is not offered and get a reply saying so, without a call. The requests then go through
herd/sdg/filters.py (duplicates, length, language,
decontamination against evaluation sets), each step counted in the summary.
"""
from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.errors import HerdError
from herd.generator import ChatRequest, Generator, complete
from herd.tokenizer.messages import Message, ToolCall, ToolDefinition, to_tools

PERSONAS = ("a busy parent", "a student", "a software engineer", "a traveller", "a small-business owner",
            "a retired teacher", "a journalist", "a nurse on a night shift", "a data analyst", "a chef",
            "a project manager", "a tourist abroad", "a researcher", "a shop assistant", "a sports coach")
STYLES = ("short and direct", "polite and detailed", "casual", "in a hurry", "with a bit of context first",
          "as a question", "as an instruction")
NO_TOOL_TOPICS = ("a general-knowledge question", "small talk", "advice on writing an email", "a definition of a "
                  "word", "a question about history", "a request for a short poem", "a cooking tip",
                  "a question about a famous book")


def read_tools(path: str | Path) -> list[dict[str, Any]]:
    """OpenAI tool definitions from a JSON file (a list, or an object with `tools`), checked."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise HerdError(f"{path}: cannot read tool definitions: {e}") from None
    tools = raw.get("tools") if isinstance(raw, dict) else raw
    if not isinstance(tools, list) or not tools:
        raise HerdError(f"{path}: expected a non-empty list of OpenAI tool definitions")
    tools = [t if isinstance(t, dict) and "type" in t else {"type": "function", "function": t} for t in tools]
    try:
        defs = to_tools(tools)
    except HerdError as e:
        raise HerdError(f"{path}: {e}") from None
    names = [d.tool_name for d in defs]
    if len(set(names)) != len(names):
        raise HerdError(f"{path}: tool names must be unique")
    return tools


def load_stubs(path: str | Path) -> dict[str, Callable[..., Any]]:
    """The public functions of a Python file, by name (the tools' stub implementations)."""
    path = Path(path)
    if not path.is_file():
        raise HerdError(f"--stubs {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"herd_sdg_stubs_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as e:
        raise HerdError(f"--stubs {path}: {type(e).__name__}: {e}") from None
    return {n: f for n, f in vars(module).items() if inspect.isfunction(f) and not n.startswith("_")}


@dataclass
class ToolSDGResult:
    dialogs: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # attempted, invalid_call, stub_failed, ...
    first_errors: dict[str, str] = field(default_factory=dict)  # the first message of each kind of failure

    def count(self, name: str, n: int = 1, error: str | None = None) -> None:
        self.counts[name] = self.counts.get(name, 0) + n
        if error is not None:
            self.first_errors.setdefault(name, error)


def _schema_text(d: ToolDefinition) -> str:
    return json.dumps({"name": d.tool_name, "description": d.description, "parameters": d.parameters})


def _clean_request(text: str) -> str:
    text = text.strip().strip('"').strip()
    for prefix in ("Request:", "User:", "User request:"):
        if text.lower().startswith(prefix.lower()):
            text = text[len(prefix):].strip()
    return text.split("\n\n")[0].strip().strip('"').strip()


async def _ask(gen: Generator, prompt: str, *, temperature: float, seed: int, max_tokens: int) -> str:
    result = await complete(gen, ChatRequest([Message("user", prompt)], temperature=temperature, seed=seed,
                                             max_tokens=max_tokens))
    return result.message.content


OPENERS = ("", "Hi! ", "Hey, ", "Hello. ", "Quick one: ", "Morning! ", "Sorry to bother you, ")
TEMPLATES = ("{opener}Can you {verb} with {pairs}?", "{opener}I want to {verb}: {colon_pairs}.",
             "{opener}Please {verb} for me. {sentences}", "{opener}Could you {verb}? {sentences}",
             "{opener}{Verb}, {pairs}.", "{opener}I need to {verb} ({colon_pairs}).")


def template_request(tool: ToolDefinition, arguments: dict[str, Any], rng: random.Random) -> str:
    """A user request written from the call's values by templates (no model): varied openers and phrasings
    around the tool's name as a verb ("get_weather" -> "get weather") and every argument by name."""
    verb = " ".join(tool.tool_name.replace(".", "_").split("_")).strip().lower() or "use the tool"
    items = [(k.replace("_", " "), v if isinstance(v, str) else json.dumps(v)) for k, v in arguments.items()]
    rng.shuffle(items)
    pairs = " and ".join(f"{k} {v}" for k, v in items) if items else "the defaults"
    colon = ", ".join(f"{k}: {v}" for k, v in items) if items else "no details"
    sentences = " ".join(f"The {k} is {v}." for k, v in items)
    opener = rng.choice(OPENERS)
    body = rng.choice(TEMPLATES).format(opener="", verb=verb, Verb=verb[:1].upper() + verb[1:], pairs=pairs,
                                        colon_pairs=colon, sentences=sentences)
    if opener.endswith(", "):  # "Hey, can you ..."
        body = body[:1].lower() + body[1:]
    return " ".join((opener + body).split())


UNAVAILABLE_REPLIES = (
    "None of the tools I have here can {what}, so I can't do that for you right now.",
    "I'm sorry, I don't have a tool that can {what}. Is there something else I can help with?",
    "I can't help with that here: my tools can't {what}.",
    "That needs a tool to {what}, and I don't have one available in this conversation.",
)


def unavailable_reply(tool: ToolDefinition, rng: random.Random) -> str:
    """A reply for a request only a tool that is not offered could serve: what it would have done, and no."""
    what = (tool.description or tool.tool_name.replace("_", " ")).strip().rstrip(".")
    what = what[:1].lower() + what[1:]
    return rng.choice(UNAVAILABLE_REPLIES).format(what=what)


def read_request_templates(path: str | Path, tools: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """{tool name: [request template, ...]} from a JSON file; each template's `{param}` placeholders must be
    the tool's properties and name every required one."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise HerdError(f"{path}: cannot read request templates: {e}") from None
    if not isinstance(raw, dict):
        raise HerdError(f"{path}: expected an object {{tool name: [template, ...]}}")
    defs = {d.tool_name: d for d in to_tools(tools)}
    for name, templates in raw.items():
        if name not in defs:
            raise HerdError(f"{path}: {name!r} is not a tool in the tools file")
        if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
            raise HerdError(f"{path}: {name}: expected a non-empty list of template strings")
        params = defs[name].parameters or {}
        props, required = set(params.get("properties", {})), set(params.get("required", []))
        for t in templates:
            try:
                used = template_fields(t)
            except ValueError as e:
                raise HerdError(f"{path}: {name}: template {t!r}: {e}") from None
            if used - props or required - used:
                raise HerdError(f"{path}: {name}: template {t!r} must use only the tool's parameters "
                                f"({', '.join(sorted(props)) or 'none'}) and all required ones")
    return raw


def _spoken(value: Any) -> str:
    """A call value as a person would write it in a request."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        words = [_spoken(v) for v in value]
        if len(words) < 2:
            return words[0] if words else "none"
        return ", ".join(words[:-1]) + " and " + words[-1]
    if isinstance(value, dict):
        return ", ".join(f"{k.replace('_', ' ')} {_spoken(v)}" for k, v in value.items())
    return str(value)


def template_fields(template: str) -> set[str]:
    """The `{param}` placeholders of a request template."""
    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


def fill_template(template: str, arguments: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(the request, the arguments it states): optional arguments the template leaves out are dropped.
    Every placeholder must have a value in `arguments`."""
    used = template_fields(template)
    kept = {k: v for k, v in arguments.items() if k in used}
    return template.format(**{k: _spoken(v) for k, v in kept.items()}), kept


_LOOP = re.compile(r"(.{3,}?)\1{2,}")  # a piece said three times in a row: a small model looping


def implausible_value(arguments: dict[str, Any], max_chars: int = 80) -> str | None:
    """The first invented string value that no user would write: blank, over `max_chars`, or looping."""
    for k, v in arguments.items():
        if isinstance(v, str) and (not v.strip() or len(v) > max_chars or _LOOP.search(v)):
            return f"{k}={v[:100]!r}"
    return None


async def make_dialog(gen: Generator, tools: list[dict[str, Any]], defs: list[ToolDefinition], stubs: dict[str, Any],
                      index: int, *, tool: ToolDefinition | None, seed: int, temperature: float,
                      result: ToolSDGResult, requests: str = "model",
                      request_templates: dict[str, list[str]] | None = None,
                      keep_calls_without_answer: bool = False, unavailable: bool = False) -> dict[str, Any] | None:
    """One dialog offering `tools` (`defs`, the same as ToolDefinitions) that calls `tool` (None: no call).
    `unavailable`: the request is written for `tool`, which is not among the offered ones, and the reply says
    that no offered tool does it, without a call."""
    import jsonschema

    rng = random.Random(seed * 1_000_003 + index)
    persona, style = rng.choice(PERSONAS), rng.choice(STYLES)
    if tool is None:
        prompt = (f"Write one message that {persona} might send to an AI assistant: {rng.choice(NO_TOOL_TOPICS)}, "
                  f"{style}. It must not need any tool or live data. Write only the message.")
    else:
        # the values first (a grammar-constrained call the model invents), then a message that asks for them:
        # the request then carries every value the call needs
        invented = await complete(gen, ChatRequest(
            [Message("user", f"Invent realistic example values for a call to the tool {tool.tool_name} "
                             f"({tool.description}), as {persona} would need them.")],
            [tool], tool.tool_name, temperature=temperature, seed=seed + index, max_tokens=160))
        if len(invented.message.tool_calls) != 1:
            result.count("no_call")
            return None
        bad = implausible_value(invented.message.tool_calls[0].arguments)
        if bad is not None:
            result.count("implausible_value", error=bad)
            return None
        values = "; ".join(f"{k}: {v}" for k, v in invented.message.tool_calls[0].arguments.items())
        prompt = (f"Write the message that {persona} sends to an AI assistant to ask for this: "
                  f"{tool.description} ({values}). Mention every value. Be {style}. Write only the message.")
    if tool is not None and requests == "template":
        arguments = invented.message.tool_calls[0].arguments
        # the tool's templates whose every placeholder has a value (the model may leave optional ones out)
        own = [t for t in (request_templates or {}).get(tool.tool_name, ()) if template_fields(t) <= set(arguments)]
        if own:  # the tool's own phrasings; optional values a template leaves out leave the call too
            request, arguments = fill_template(rng.choice(own), arguments)
            invented.message.tool_calls[0].arguments = arguments
        else:
            request = template_request(tool, arguments, rng)
    else:
        request = _clean_request(await _ask(gen, prompt, temperature=temperature, seed=seed + index, max_tokens=96))
    if not request:
        result.count("empty_request")
        return None
    if any(ch in request for ch in "{}[]") or request.count("\n") > 3:
        result.count("bad_request", error=request[:200])  # a schema echoed, or not one message
        return None
    user = {"role": "user", "content": request}
    request_msg = Message("user", request)
    if unavailable and tool is not None:  # a near miss: the tool it needs is not offered, so no call
        result.count("unavailable_tool")  # made, not dropped
        return {"messages": [user, {"role": "assistant", "content": unavailable_reply(tool, rng)}], "tools": tools}
    if tool is None:
        answer = await complete(gen, ChatRequest([request_msg], defs, "none", temperature=0.0, max_tokens=160))
        if not answer.message.content.strip():
            result.count("empty_answer")
            return None
        return {"messages": [user, {"role": "assistant", "content": answer.message.content.strip()}], "tools": tools}
    if requests == "template":  # the request was written from the invented call: that call is its answer
        calls = invented.message.tool_calls
    else:
        called = await complete(gen, ChatRequest([request_msg], defs, tool.tool_name, temperature=0.0,
                                                 max_tokens=192))
        calls = called.message.tool_calls
    if len(calls) != 1 or calls[0].tool_name != tool.tool_name:
        result.count("no_call")
        return None
    call = calls[0]
    if not jsonschema.Draft202012Validator(tool.parameters or {"type": "object"}).is_valid(call.arguments):
        result.count("invalid_call")
        return None
    missing = ungrounded(request, call.arguments, tool)
    if missing:  # the model made up a value the user never gave: not a call to learn
        result.count("ungrounded_call", error=f"{request[:120]!r}: {missing}")
        return None
    try:
        value = stubs[tool.tool_name](**call.arguments)
        content = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    except Exception as e:  # the call does not run: not a dialog to learn from
        result.count("stub_failed", error=f"{tool.tool_name}({json.dumps(call.arguments)}): {type(e).__name__}: {e}")
        return None
    call_id = f"call_{index}"
    tc = ToolCall(call_id, tool.tool_name, call.arguments)
    call_only = {"messages": [user, {"role": "assistant", "content": None, "tool_calls": [tc.to_openai()]}],
                 "tools": tools}
    # the answer from the result in plain words, asked as a fresh question (a small model shown the call and
    # the result as a dialog tends to write the call again)
    answer = await complete(gen, ChatRequest(
        [Message("user", f"A user asked an assistant: {request}\nThe assistant looked it up with the tool "
                         f"{tool.tool_name}, which returned: {content}\nWrite the assistant's reply to the user: "
                         "one or two plain sentences that give the result. No JSON.")],
        temperature=0.0, max_tokens=160))
    text = answer.message.content.strip()
    if not text:
        failure: tuple[str, str | None] | None = ("empty_answer", None)
    elif text.startswith(("{", "[")) or '"arguments"' in text or tool.tool_name in text or "returned:" in text \
            or "```" in text or "assistant" in text.lower() or _LOOP.search(text):
        failure = ("bad_answer", text[:200])  # the call or the prompt repeated, or talk about it, or a loop
    elif not answer_uses(text, value):
        failure = ("ungrounded_answer", text[:200])  # says nothing the tool returned
    else:
        failure = None
    if failure is not None:
        if keep_calls_without_answer:  # the call is still one to learn: the dialog ends with it (not a drop)
            result.count("kept_call_only", error=f"{failure[0]}: {failure[1]}")
            return call_only
        result.count(failure[0], error=failure[1])
        return None
    return {"messages": [user, {"role": "assistant", "content": None, "tool_calls": [tc.to_openai()]},
                         {"role": "tool", "tool_call_id": call_id, "content": content},
                         {"role": "assistant", "content": text}], "tools": tools}


async def generate_tool_dialogs(gen: Generator, tools: list[dict[str, Any]], stubs: dict[str, Any], *, n: int,
                                seed: int = 0, temperature: float = 1.0, no_tool_share: float = 0.15,
                                concurrency: int = 16, requests: str = "model",
                                tools_per_dialog: int | None = None,
                                request_templates: dict[str, list[str]] | None = None,
                                keep_calls_without_answer: bool = False, unavailable_share: float = 0.0,
                                progress: Callable[[int], None] | None = None) -> ToolSDGResult:
    """n attempted dialogs (see the module docstring); the ones that survive, with counts of the others.

    `tools_per_dialog` k: each dialog offers k of the tools (the one it calls and k-1 others drawn at
    random, in random order; a dialog that needs no tool: any k), not all of them: shorter prompts, and a
    model that learns to pick the right tool among others and to call none when none fits.
    `request_templates` ({tool: [template]}, requests="template"): the tools' own request phrasings.
    `keep_calls_without_answer`: a dialog whose final answer fails its checks is kept up to the call.
    `unavailable_share`: of the dialogs that would call a tool, this share offer k other tools instead (the
    request asks for the missing one; the reply says no offered tool does that): when *not* to call."""
    defs = to_tools(tools)
    if tools_per_dialog is not None and not 1 <= tools_per_dialog:
        raise HerdError("tools_per_dialog must be >= 1")
    missing = [d.tool_name for d in defs if d.tool_name not in stubs]
    if missing:
        raise HerdError(f"no stub implementation for {', '.join(missing)} (define a function of that name in --stubs)")
    if not 0.0 <= no_tool_share < 1.0 or not 0.0 <= unavailable_share < 1.0:
        raise HerdError("no_tool_share and unavailable_share must be in [0, 1)")
    if requests not in ("model", "template"):
        raise HerdError(f"requests must be 'model' or 'template', got {requests!r}")
    result = ToolSDGResult()
    rng = random.Random(seed)
    plan: list[tuple[ToolDefinition | None, list[int], bool]] = []
    k = min(tools_per_dialog or len(defs), len(defs))
    for i in range(n):
        tool = None if rng.random() < no_tool_share else i % len(defs)
        # a near miss: the needed tool is left out (possible only when some tool is left out anyway)
        missing = tool is not None and k < len(defs) and unavailable_share > 0 and rng.random() < unavailable_share
        others = [j for j in range(len(defs)) if j != tool]
        offered = ([] if tool is None or missing else [tool]) + rng.sample(others, k - (tool is not None
                                                                                        and not missing))
        if k < len(defs):
            rng.shuffle(offered)
        else:
            offered = list(range(len(defs)))  # all of them, in the file's order
        plan.append((None if tool is None else defs[tool], offered, missing))
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, tool: ToolDefinition | None, offered: list[int], missing: bool) -> dict[str, Any] | None:
        async with gate:
            try:
                return await make_dialog(gen, [tools[j] for j in offered], [defs[j] for j in offered], stubs, i,
                                         tool=tool, seed=seed, temperature=temperature, result=result,
                                         requests=requests, request_templates=request_templates,
                                         keep_calls_without_answer=keep_calls_without_answer, unavailable=missing)
            except HerdError as e:  # e.g. the request does not fit the model's context
                result.count("model_error", error=str(e))
                return None
            finally:
                if progress:
                    progress(1)

    dialogs = await asyncio.gather(*(one(i, *p) for i, p in enumerate(plan)))
    result.count("attempted", n)
    result.dialogs = [d for d in dialogs if d is not None]
    result.count("generated", len(result.dialogs))
    return result


def ungrounded(request: str, arguments: dict[str, Any], tool: ToolDefinition) -> list[str]:
    """The required arguments whose string or number value does not appear in the request (case and
    spacing ignored); enums and booleans are the model's to choose."""
    props = (tool.parameters or {}).get("properties", {})
    low = " ".join(request.lower().split())
    out = []
    for name in (tool.parameters or {}).get("required", []):
        value, spec = arguments.get(name), props.get(name, {})
        if "enum" in spec or isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            forms = {str(value), f"{value:g}"} | ({str(int(value))} if float(value).is_integer() else set())
            if not any(f in low for f in forms):
                out.append(name)
        elif isinstance(value, str) and " ".join(value.lower().split()) not in low:
            out.append(name)
    return out


def _scalars(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _scalars(v)]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _scalars(v)]
    if isinstance(value, bool) or value is None:
        return []
    return [str(value)]


def answer_uses(answer: str, result: Any) -> bool:
    """Whether the answer states at least one value of the tool result (a number or a string of 2+
    characters; a plain-text result: any of its words of 4+ letters)."""
    low = answer.lower()
    if isinstance(result, str):
        return any(w.lower() in low for w in result.split() if len(w) >= 4) or not result.strip()
    return any(x.lower() in low for x in _scalars(result) if len(x) >= 2 or x.isdigit())


def calls_valid(dialog: dict[str, Any]) -> bool:
    """Every tool call in the dialog names an offered tool and its arguments validate against its schema."""
    import jsonschema

    defs = {d.tool_name: d for d in to_tools(dialog.get("tools"))}
    for m in dialog["messages"]:
        for c in m.get("tool_calls") or []:
            fn = c["function"]
            d = defs.get(fn["name"])
            if d is None or not jsonschema.Draft202012Validator(d.parameters or {"type": "object"}).is_valid(
                    json.loads(fn["arguments"])):
                return False
    return True


def as_prompt(dialog: dict[str, Any]) -> dict[str, Any]:
    """A dialog's first user turn as a `herd train rejection-sample --verifier tool_call` prompt: the
    offered tools and the calls the first reply should make (none for a dialog that needs no tool)."""
    first = dialog["messages"][1] if len(dialog["messages"]) > 1 else {}
    calls = [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
             for c in first.get("tool_calls") or []]
    return {"messages": dialog["messages"][:1], "tools": dialog.get("tools", []), "expected_tool_calls": calls}


def tool_names(dialogs: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many dialogs call each tool ("(none)" for no call)."""
    out: dict[str, int] = {}
    for d in dialogs:
        names = [c["function"]["name"] for m in d["messages"] for c in m.get("tool_calls") or []] or ["(none)"]
        for name in names:
            out[name] = out.get(name, 0) + 1
    return out
