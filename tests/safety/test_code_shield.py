"""Code Shield: codeshield's Insecure Code Detector on known-insecure and clean code, offline."""
from __future__ import annotations

import asyncio

import pytest

from herd.errors import HerdError
from herd.safety.code_shield import CODE_SHIELD_REFUSAL, CodeShield, extract_code

MD5_PASSWORD = '''import hashlib

def store_password(password: str) -> str:
    return hashlib.md5(password.encode()).hexdigest()
'''
SHELL_INJECTION = '''import subprocess

def list_dir(user_input):
    subprocess.call("ls " + user_input, shell=True)
'''
CLEAN = '''import hashlib

def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
'''


@pytest.fixture(scope="module")
def cs() -> CodeShield:
    return CodeShield()


def test_md5_password_hashing_is_flagged_with_cwe_and_line(cs) -> None:
    reply = [{"role": "assistant", "content": f"Here you go:\n```python\n{MD5_PASSWORD}```\nDone."}]
    v = cs.run(reply).violation
    assert v is not None and v.violation_level == "error" and v.user_message == CODE_SHIELD_REFUSAL
    issues = v.metadata["issues"]
    assert {i["cwe_id"] for i in issues} & {"CWE-327", "CWE-328"}
    assert all(i["line"] == 4 and i["language"] == "python" for i in issues)
    assert "md5" in v.metadata["violation_type"]
    assert v.metadata["recommended_treatment"] in ("warn", "block")


def test_shell_injection_in_a_code_interpreter_call(cs) -> None:
    call = {"role": "assistant", "content": "", "tool_calls": [{
        "call_id": "c1", "tool_name": "code_interpreter", "arguments": {"code": SHELL_INJECTION}}]}  # Llama Stack shape
    v = cs.run([{"role": "user", "content": "list my files"}, call]).violation
    assert v is not None
    ids = [i["pattern_id"] for i in v.metadata["issues"]]
    assert "insecure-subprocess-using-shell" in ids  # semgrep's path prefix stripped from the rule id
    assert "CWE-78" in v.metadata["cwe_ids"]


def test_clean_code_passes(cs) -> None:
    assert cs.run([{"role": "assistant", "content": f"```python\n{CLEAN}```"}]).violation is None
    assert cs.run([{"role": "assistant", "content": CLEAN}]).violation is None  # unknown language: all of them
    assert cs.run([{"role": "user", "content": "What is the capital of France?"}]).violation is None


def test_extract_code_sources() -> None:
    msgs = [{"role": "assistant", "content": "a\n```js\nx()\n```\nand\n```\nplain\n```"},
            {"role": "user", "content": "no code here"}]
    snippets = extract_code(msgs)
    assert [(s.code, s.language) for s in snippets] == [("x()\n", "javascript"), ("plain\n", None),
                                                        ("no code here", None)]


def test_moderation_and_running_inside_an_event_loop(cs) -> None:
    async def inside() -> list:
        return cs.moderate([MD5_PASSWORD, CLEAN])  # a server may call it from async code

    flagged, clean = asyncio.run(inside())
    assert flagged.flagged and all(flagged.categories.values()) and flagged.user_message == CODE_SHIELD_REFUSAL
    assert not clean.flagged and clean.categories == {}


def test_bad_params() -> None:
    with pytest.raises(HerdError, match="unsupported language"):
        CodeShield(languages=["cobol"])
    with pytest.raises(HerdError, match="min_severity"):
        CodeShield(min_severity="fatal")
    assert CodeShield(min_severity="error").scan_text(MD5_PASSWORD, "python") == []  # md5 is a warning
