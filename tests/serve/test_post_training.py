"""Llama Stack post-training over HTTP, with the real `llama-stack-client` 0.2.12 against real `herd serve`
processes on their own HERD_HOME, serving a tiny random checkpoint: a registered dataset fine-tuned with
LoRA, with every weight and with DPO (from the LoRA job's model), as detached `herd train` jobs that
complete and leave a merged model that loads; one job at a time (the next waits `scheduled`); cancel
ends the job's processes; a job outlives a killed server, is adopted by the next one and, killed too,
resumes from its checkpoint; bad requests are 400 / 404 / 409 naming the field."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from servekit import ServerProcess, home_server, stack_client, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinymodels import build_tiny_llama3

from herd.serve.post_training_jobs import group_alive

MODEL_ID = "tiny-llama"  # the served id: the checkpoint directory's name
CHAT = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(8)]
PREFS = [{"prompt": [{"role": "user", "content": f"Say the number {i}."}],
          "chosen": [{"role": "assistant", "content": f"{i}"}],
          "rejected": [{"role": "assistant", "content": "I would rather not."}]} for i in range(4)]
LORA = {"type": "LoRA", "lora_attn_modules": ["q_proj", "v_proj", "output_proj"], "apply_lora_to_mlp": True,
        "apply_lora_to_output": False, "rank": 4, "alpha": 8}


def training_config(steps: int, dataset: str = "chat", lr: float = 1e-3) -> dict[str, Any]:
    return {"n_epochs": 1, "max_steps_per_epoch": steps, "gradient_accumulation_steps": 1, "max_seq_len": 128,
            "data_config": {"dataset_id": dataset, "batch_size": 1, "shuffle": True, "data_format": "dialog"},
            "optimizer_config": {"optimizer_type": "adamw", "lr": lr, "weight_decay": 0.0, "num_warmup_steps": 0}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama3(tmp_path_factory.mktemp("ckpt") / MODEL_ID, max_seq_len=2048)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    yield home
    kill_jobs(home)  # jobs outlive their server by design: none may outlive the tests


def kill_jobs(home: Path) -> None:
    """SIGKILL the process groups left of a HERD_HOME's jobs (running, or cancelled and not yet gone)."""
    db = home / "post_training.sqlite"
    if not db.exists():
        return
    with sqlite3.connect(db) as conn:
        pids = [r[0] for r in conn.execute("SELECT pid FROM jobs WHERE status IN ('in_progress', 'cancelled') "
                                           "AND pid IS NOT NULL")]
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline")
        if group_alive(pid) and (not cmdline.exists() or str(home) in cmdline.read_text(errors="replace")):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def server(tiny: Path, home: Path) -> Iterator[ServerProcess]:
    srv = home_server(tiny, home)
    yield srv
    srv.stop(kill=True)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Any:
    c = stack_client(server, timeout=60)
    c.datasets.register(purpose="post-training/messages", source={"type": "rows", "rows": CHAT}, dataset_id="chat")
    c.datasets.register(purpose="post-training/preference", source={"type": "rows", "rows": PREFS},
                        dataset_id="prefs")
    return c


def wait_status(client: Any, job_uuid: str, want: str, timeout: float = 60) -> Any:
    end = time.monotonic() + timeout
    while True:
        st = client.post_training.job.status(job_uuid=job_uuid)
        if st.status == want:
            return st
        assert st.status not in {"completed", "failed", "cancelled"} - {want}, st
        assert time.monotonic() < end, f"{job_uuid} still {st.status} after {timeout}s"
        time.sleep(0.25)


def job_dir(home: Path, job_uuid: str) -> Path:
    return home / "post_training" / job_uuid


def sft(client: Any, job_uuid: str, steps: int, **kw: Any) -> None:
    client.post_training.supervised_fine_tune(job_uuid=job_uuid, model=kw.pop("model", MODEL_ID),
                                              training_config=kw.pop("training_config", training_config(steps)),
                                              hyperparam_search_config={}, logger_config={}, **kw)


def forward(path: Path) -> torch.Tensor:
    from herd.model.weights import load_model

    tokens = torch.randint(1000, 100000, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return load_model(path, dtype=torch.float32)(tokens)


def test_bad_requests_name_the_field(client):
    from llama_stack_client import BadRequestError, NotFoundError

    cases = [  # (kwargs, error, param)
        ({"training_config": training_config(2, dataset="nope")}, NotFoundError,
         "training_config.data_config.dataset_id"),
        ({"model": "no-such-model"}, NotFoundError, "model"),
        ({"algorithm_config": {"type": "QAT", "quantizer_name": "int8", "group_size": 32}}, BadRequestError,
         "algorithm_config.type"),
        ({"algorithm_config": {**LORA, "use_dora": True}}, BadRequestError, "algorithm_config.use_dora"),
        ({"algorithm_config": {**LORA, "lora_attn_modules": ["x_proj"]}}, BadRequestError,
         "algorithm_config.lora_attn_modules"),
        ({"checkpoint_dir": "/tmp/elsewhere"}, BadRequestError, "checkpoint_dir"),
        ({"training_config": {**training_config(2), "optimizer_config": {
            "optimizer_type": "sgd", "lr": 0.1, "weight_decay": 0.0, "num_warmup_steps": 0}}}, BadRequestError,
         "training_config.optimizer_config.optimizer_type"),
    ]
    for kwargs, error, param in cases:
        with pytest.raises(error) as e:
            sft(client, "bad-job", 2, **kwargs)
        assert e.value.response.json()["error"]["param"] == param, e.value.body
    with pytest.raises(BadRequestError) as e:  # hyperparameter search
        client.post_training.supervised_fine_tune(job_uuid="bad-job", model=MODEL_ID,
                                                  training_config=training_config(2),
                                                  hyperparam_search_config={"lr": [1e-4, 1e-3]}, logger_config={})
    assert e.value.response.json()["error"]["param"] == "hyperparam_search_config"
    with pytest.raises(BadRequestError) as e:  # chat rows are not preference pairs
        client.post_training.preference_optimize(
            job_uuid="bad-job", finetuned_model=MODEL_ID, training_config=training_config(2, dataset="chat"),
            algorithm_config={"reward_scale": 0.1, "reward_clip": 0.0, "epsilon": 0.0, "gamma": 0.0},
            hyperparam_search_config={}, logger_config={})
    assert "prompt, chosen and rejected" in e.value.response.json()["error"]["message"]
    with pytest.raises(BadRequestError) as e:
        client.post_training.preference_optimize(
            job_uuid="bad-job", finetuned_model=MODEL_ID, training_config=training_config(2, dataset="prefs"),
            algorithm_config={"beta": 0.1, "loss_type": "hinge"}, hyperparam_search_config={}, logger_config={})
    assert e.value.response.json()["error"]["param"] == "algorithm_config.loss_type"
    for call in (client.post_training.job.status, client.post_training.job.artifacts, client.post_training.job.cancel):
        with pytest.raises(NotFoundError):
            call(job_uuid="no-such-job")
    assert client.post_training.job.list() == []  # nothing was created by the refused requests


def test_lora_fine_tune_completes_with_a_merged_model(client, home, tiny):
    from llama_stack_client import ConflictError

    sft(client, "lora-1", 6, algorithm_config=LORA)
    st = wait_status(client, "lora-1", "completed")
    assert st.scheduled_at and st.started_at and st.completed_at and st.resources_allocated["device"] == "cpu"
    names = [c["identifier"] for c in st.checkpoints]
    assert names[-2:] == ["lora-1/adapter", "lora-1/merged"] and "lora-1/step-6" in names
    final = st.checkpoints[-1]
    assert final["post_training_job_id"] == "lora-1" and final["training_metrics"]["train_loss"] > 0
    arts = client.post_training.job.artifacts(job_uuid="lora-1")
    assert arts.job_uuid == "lora-1" and [c["identifier"] for c in arts.checkpoints] == names
    merged = Path(final["path"])
    assert merged == (job_dir(home, "lora-1") / "out" / "merged").resolve()
    assert all(Path(c["path"]).exists() for c in arts.checkpoints)
    adapter = json.loads((job_dir(home, "lora-1") / "out" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and sorted(adapter["target_modules"]) == ["down_proj", "gate_proj", "o_proj", "q_proj",
                                                                       "up_proj", "v_proj"]
    assert (forward(merged) - forward(tiny)).abs().max() > 0  # loads, and training changed it
    command = json.loads((job_dir(home, "lora-1") / "command.json").read_text())["argv"]
    assert command[command.index("--model") + 1] == str(tiny.resolve()) and "--lora-alpha" in command
    assert [j.job_uuid for j in client.post_training.job.list()] == ["lora-1"]
    with pytest.raises(ConflictError):  # the uuid is taken
        sft(client, "lora-1", 2)
    with pytest.raises(ConflictError):  # it has ended
        client.post_training.job.cancel(job_uuid="lora-1")


def test_one_job_at_a_time_and_cancel_ends_the_process(client, home, tiny):
    sft(client, "long-1", 1_000_000, algorithm_config=LORA)
    st = wait_status(client, "long-1", "in_progress")
    pid = int(st.resources_allocated["pid"])  # the client reads numbers as floats
    assert group_alive(pid)
    sft(client, "full-1", 4)  # every weight; waits for the running job
    assert client.post_training.job.status(job_uuid="full-1").status == "scheduled"
    assert wait_until(lambda: (job_dir(home, "long-1") / "out" / "metrics.jsonl").is_file(), timeout=60)
    client.post_training.job.cancel(job_uuid="long-1")
    st = client.post_training.job.status(job_uuid="long-1")
    assert st.status == "cancelled" and st.completed_at
    assert wait_until(lambda: not group_alive(pid), timeout=15)
    assert not (job_dir(home, "long-1") / "result.json").exists()
    st = wait_status(client, "full-1", "completed")  # started when the slot freed
    assert [c["identifier"] for c in st.checkpoints][-1] == "full-1/merged"
    assert not (job_dir(home, "full-1") / "out" / "adapter").exists()
    assert (forward(Path(st.checkpoints[-1]["path"])) - forward(tiny)).abs().max() > 0
    assert client.post_training.job.status(job_uuid="long-1").status == "cancelled"


def test_dpo_from_the_fine_tuned_model(client, home):
    # Llama Stack 0.2.12's DPO fields: reward_scale is beta, epsilon the label smoothing
    client.post_training.preference_optimize(
        job_uuid="dpo-1", finetuned_model="lora-1", training_config=training_config(3, dataset="prefs", lr=1e-4),
        algorithm_config={"reward_scale": 0.2, "reward_clip": 0.0, "epsilon": 0.1, "gamma": 0.0},
        hyperparam_search_config={}, logger_config={})
    st = wait_status(client, "dpo-1", "completed")
    assert st.checkpoints[-1]["identifier"] == "dpo-1/merged"
    command = json.loads((job_dir(home, "dpo-1") / "command.json").read_text())["argv"]
    assert command[3:5] == ["train", "dpo"] and command[command.index("--beta") + 1] == "0.2"
    assert command[command.index("--model") + 1] == str((job_dir(home, "lora-1") / "out" / "merged").resolve())
    forward(Path(st.checkpoints[-1]["path"]))


def test_a_job_outlives_the_server_and_resumes_when_killed(server, client, tiny, home):
    sft(client, "restart-1", 30, algorithm_config=LORA)  # a checkpoint every 3 steps
    pid = int(wait_status(client, "restart-1", "in_progress").resources_allocated["pid"])
    out = job_dir(home, "restart-1") / "out"
    assert wait_until(lambda: (out / "checkpoints" / "latest").is_file(), timeout=60)
    os.killpg(pid, signal.SIGSTOP)  # held where it is while no server watches
    server.stop(kill=True)  # SIGKILL: no shutdown at all
    second = home_server(tiny, home)
    try:
        c = stack_client(second, timeout=60)
        st = c.post_training.job.status(job_uuid="restart-1")
        assert st.status == "in_progress" and st.resources_allocated["pid"] == pid  # adopted, still running
        assert c.post_training.job.status(job_uuid="lora-1").status == "completed"  # the state survived
        os.killpg(pid, signal.SIGKILL)  # now the job dies too, without a result
        st = wait_status(c, "restart-1", "completed", timeout=90)
        assert st.resources_allocated["attempts"] == 2 and st.resources_allocated["pid"] != pid
        result = json.loads((job_dir(home, "restart-1") / "result.json").read_text())
        resumed_from = result["summary"]["resumed_from"]
        assert result["resumed"] and resumed_from >= 3 and result["summary"]["steps"] == 30 - resumed_from
        assert [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == \
            list(range(1, 31))
        assert "restart-1" in [j.job_uuid for j in c.post_training.job.list()]
    finally:
        second.stop(kill=True)
