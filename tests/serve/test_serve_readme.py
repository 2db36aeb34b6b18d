"""The README's `## Serve` examples (curl and openai) run as written against a real server."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from servekit import API_KEY, REPO

README_URL = "http://127.0.0.1:8321"


def serve_blocks(lang: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Serve", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", section, re.DOTALL)


def test_readme_curl_example(server):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    (block,) = [b for b in serve_blocks("sh") if b.lstrip().startswith("curl")]
    cmd = block.replace(README_URL, server.url)
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HERD_API_KEY": API_KEY})
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert "Paris" in reply["choices"][0]["message"]["content"] and reply["usage"]["total_tokens"] > 0


def test_readme_openai_example(server):
    (block,) = serve_blocks("python")
    r = subprocess.run([sys.executable, "-c", block.replace(README_URL, server.url)], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "HERD_API_KEY": API_KEY})
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("get_weather {") and len(r.stdout.splitlines()[1]) > 0


def test_serve_help_has_examples():
    r = subprocess.run([sys.executable, "-m", "herd.cli.main", "serve", "--help"], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0 and "examples:" in r.stdout and "--config" in r.stdout and "curl" in r.stdout
