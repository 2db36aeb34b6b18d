"""FSDP2 data parallelism under torchrun (gloo, 2 CPU processes): the same loss curve and weights as one
process on the same global batch, for full fine-tuning and LoRA; a checkpoint written by one process
resumes on two and ends where the one-process run ends; an indivisible global batch is a clear error."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_sft import QUESTIONS, dialog  # noqa: E402
from tinymodels import build_tiny_llama3  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dist")
    model = build_tiny_llama3(root / "model", max_seq_len=2048)
    data = root / "tools.jsonl"
    data.write_text("".join(json.dumps(dialog(q)) + "\n" for q in QUESTIONS))
    return model, data


def run(nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launch = ([sys.executable, "-m", "herd.cli.main"] if nproc == 1 else
              [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "herd.cli"])
    return subprocess.run([*launch, "train", "sft", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def common(setup: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    model, data = setup
    return ["--model", str(model), "--data", str(data), "--out", str(out), "--max-steps", "10", "--batch-size", "4",
            "--max-seq-len", "256", "--json", *extra]


def assert_same_tensors(a: Path, b: Path, atol: float) -> None:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    for k in x:
        torch.testing.assert_close(x[k], y[k], atol=atol, rtol=0, msg=k)


def test_two_processes_train_as_one(setup, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = run(1, *common(setup, one, "--lr", "1e-3"))
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = run(2, *common(setup, two, "--lr", "1e-3"))
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "training on 2 processes (FSDP2, gloo)" in r2.stderr
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 10 and a[-1] < a[0] - 1.0  # it learns
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)
    # rank 0 alone printed the summary and wrote the outputs: the whole model, as one process writes it
    assert len([line for line in r2.stdout.splitlines() if line.startswith("{")]) == 1
    assert_same_tensors(one / "merged" / "model.safetensors", two / "merged" / "model.safetensors", 1e-5)


@pytest.mark.slow
def test_lora_checkpoint_of_one_process_resumes_on_two(setup, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    lora = ("--lr", "1e-2", "--lora-rank", "4", "--save-every", "5")
    r1 = run(1, *common(setup, one, *lora))
    assert r1.returncode == 0, r1.stderr[-3000:]
    # the one-process run as it stood at step 5: its checkpoint and metrics so far
    (two / "checkpoints").mkdir(parents=True)
    shutil.copytree(one / "checkpoints" / "step-5", two / "checkpoints" / "step-5")
    (two / "checkpoints" / "latest").write_text("step-5")
    (two / "metrics.jsonl").write_text("".join(line + "\n" for line in
                                               (one / "metrics.jsonl").read_text().splitlines()[:5]))
    r2 = run(2, *common(setup, two, *lora, "--resume"))
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert json.loads(r2.stdout.strip().splitlines()[-1])["resumed_from"] == 5
    a, b = losses(one), losses(two)
    assert len(b) == 10 and max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)
    assert_same_tensors(one / "adapter" / "adapter_model.safetensors",
                        two / "adapter" / "adapter_model.safetensors", 1e-5)


def test_a_global_batch_the_processes_cannot_share_is_an_error(setup, tmp_path):
    r = run(2, *common(setup, tmp_path / "out", "--batch-size", "3"))
    assert r.returncode != 0
    # each process: one line, exit status 2, no traceback of its own (torchrun then reports the failed ranks)
    assert r.stderr.count("herd: error: --batch-size x --grad-accum (3) must be a multiple of the number of "
                          "processes (2)") == 2, r.stderr[-3000:]
    assert "exitcode  : 2" in r.stderr and "[rank0]: Traceback" not in r.stderr
    assert not (tmp_path / "out" / "merged").exists()


@pytest.mark.slow
def test_dpo_on_two_processes_is_dpo_on_one(setup, tmp_path):
    model, _ = setup
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"Say yes {i}"}],
                                         "chosen": [{"role": "assistant", "content": "Yes."}],
                                         "rejected": [{"role": "assistant", "content": "No way."}]}) + "\n"
                             for i in range(8)))
    args = ["--model", str(model), "--data", str(prefs), "--max-steps", "4", "--batch-size", "2", "--max-seq-len",
            "256", "--lr", "1e-3", "--lora-rank", "4", "--json"]
    runs = []
    for nproc in (1, 2):
        out = tmp_path / f"dpo{nproc}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        launch = ([sys.executable, "-m", "herd.cli.main"] if nproc == 1 else
                  [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "-m", "herd.cli"])
        r = subprocess.run([*launch, "train", "dpo", *args, "--out", str(out)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        runs.append(losses(out))
    assert len(runs[0]) == 4 and runs[0][-1] < runs[0][0]
    assert max(abs(a - b) for a, b in zip(*runs)) < 1e-4, runs
