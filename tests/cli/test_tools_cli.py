"""`herd tools list|invoke` as a user runs them: real subprocesses, a real corpus, a real stdio MCP server."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MCP_SERVER = REPO / "tests" / "tools" / "mcp_server.py"
KEYS = ("BRAVE_API_KEY", "TAVILY_API_KEY", "WOLFRAM_ALPHA_API_KEY")


def herd(*args: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HERD_HOME": str(home), "PYTHONPATH": str(REPO), **dict.fromkeys(KEYS, "")}
    return subprocess.run([sys.executable, "-m", "herd.cli.main", "tools", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO, check=False)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    d.mkdir()
    (d / "vicuna.md").write_text("# Vicuna\nThe vicuna lives high in the Andes.\n")
    (d / "other.txt").write_text("Nothing relevant here.\n")
    return d


def test_list_plain_and_json(home: Path) -> None:
    r = herd("list", home=home)
    assert r.returncode == 0, r.stderr
    assert "builtin::websearch  (offline-search)" in r.stdout
    assert "  web_search(query: string)  Search the web" in r.stdout
    assert "  wolfram_alpha(query: string)" in r.stdout
    j = herd("list", "--json", "--mcp", f"{sys.executable} {MCP_SERVER}", home=home)
    assert j.returncode == 0, j.stderr
    groups = {g["identifier"]: g for g in json.loads(j.stdout)["toolgroups"]}
    assert groups["mcp::cli"]["provider_id"] == "model-context-protocol"
    add = next(t for t in groups["mcp::cli"]["tools"] if t["name"] == "add")
    assert add["parameters"]["required"] == ["a", "b"]
    assert groups["builtin::wolfram_alpha"]["tools"][0]["parameters"]["properties"]["query"]["type"] == "string"


def test_invoke_web_search_on_a_corpus(home: Path, corpus: Path) -> None:
    r = herd("invoke", "web_search", "--args", '{"query": "where do vicunas live"}', "--search-corpus", str(corpus),
             home=home)
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)["results"]
    assert hits[0]["url"] == str((corpus / "vicuna.md").resolve()) and "Andes" in hits[0]["snippet"]
    # Llama 3.1's built-in name works too, and --json gives the HTTP API's shape
    j = herd("invoke", "brave_search", "--args", '{"query": "vicuna"}', "--search-corpus", str(corpus), "--json",
             home=home)
    body = json.loads(j.stdout)
    assert j.returncode == 0 and body["error_message"] is None and body["metadata"] == {"backend": "offline",
                                                                                       "count": 1}


def test_invoke_wolfram_alpha_offline(home: Path) -> None:
    r = herd("invoke", "wolfram_alpha", "--args", '{"query": "2^100"}', home=home)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"2^100 = {2**100}", "(computed offline by sympy; no Wolfram|Alpha key)"]


def test_a_tool_error_prints_it_and_exits_1(home: Path) -> None:
    r = herd("invoke", "wolfram_alpha", "--args", '{"query": "population of France"}', home=home)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("herd tools: wolfram_alpha failed (code 2): wolfram_alpha (offline, no ")
    bad_args = herd("invoke", "web_search", "--args", '{"q": "x"}', home=home)
    assert bad_args.returncode == 1 and "'query' is a required property" in bad_args.stderr


def test_bad_input_is_one_line_and_exit_2(home: Path, tmp_path: Path) -> None:
    for args, message in ((("invoke", "web_search", "--args", "{query: x}"), "--args is not valid JSON"),
                          (("invoke", "web_search", "--args", "[1, 2]"), "--args must be a JSON object, got list"),
                          (("invoke", "nope", "--args", "{}"), "tool 'nope' not found (available: "),
                          (("invoke", "web_search", "--args", f"@{tmp_path / 'missing.json'}"), "cannot read the file"),
                          (("list", "--mcp", "http://127.0.0.1:9/mcp"),
                           "MCP server http://127.0.0.1:9/mcp is unreachable"),
                          (("invoke", "web_search", "--search-corpus", str(tmp_path / "nope")), "is not a directory")):
        r = herd(*args, home=home)
        assert r.returncode == 2, (args, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("herd: error: ") and message in lines[0], (args, r.stderr)
    assert herd(home=home).returncode == 2  # `herd tools` alone: help, exit 2


def test_invoke_an_mcp_tool_over_stdio(home: Path, tmp_path: Path) -> None:
    args_file = tmp_path / "args.json"
    args_file.write_text('{"a": 19, "b": 23}')
    r = herd("invoke", "add", "--args", f"@{args_file}", "--mcp", f"{sys.executable} {MCP_SERVER}", home=home)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "42"
    img = herd("invoke", "dot", "--mcp", f"{sys.executable} {MCP_SERVER}", "--save-attachments",
               str(tmp_path / "out"), home=home)
    assert img.returncode == 0 and "[attached image-1: image/png," in img.stdout
    assert (tmp_path / "out" / "image-1").read_bytes().startswith(b"\x89PNG")


def test_invoke_the_code_interpreter(home: Path, tmp_path: Path) -> None:
    from herd.tools.code_interpreter import isolation_available

    if isolation_available() is None:
        pytest.skip("no sandbox isolation here")
    r = herd("invoke", "code_interpreter", "--args", '{"code": "x = 6 * 7\\nprint(x)"}', "--session", "s1",
             home=home)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "42"
    boom = herd("invoke", "code_interpreter", "--args", '{"code": "1 / 0"}', home=home)
    assert boom.returncode == 1 and "ZeroDivisionError" in boom.stderr
