"""Llama Stack 0.2 post-training over HTTP: `/v1/post-training/supervised-fine-tune`, `/preference-optimize`,
`/jobs`, `/job/status`, `/job/artifacts` and `/job/cancel` (routes: herd/serve/routes.py), as background jobs
that run the `herd train sft|dpo` command (herd/serve/post_training_jobs.py: one at a time, detached, kept
in <herd_home>/post_training.sqlite, resumed from their last checkpoint after a crash or a restart).

A job is the registered dataset's rows (`training_config.data_config.dataset_id`; chat rows `{messages,
tools?}` for SFT, question/answer rows too; `{prompt, chosen, rejected}` rows for DPO) written to
`data.jsonl`, and the request mapped to the command's options: LoRA -> --lora-rank / --lora-alpha /
--lora-targets (lora_attn_modules q_proj, k_proj, v_proj, output_proj; apply_lora_to_mlp: gate, up, down),
quantize_base -> --qlora int8, no algorithm_config -> every weight; n_epochs x max_steps_per_epoch ->
--max-steps (the run's step budget), gradient_accumulation_steps, batch_size, the optimizer's lr, weight decay
and warmup; DPO's beta and loss_type. The data is always packed, in blocks of training_config.max_seq_len
tokens (herd's extension, default 2048), and read in a seeded shuffled order; a checkpoint is kept every
tenth of the run. Options herd cannot honour (QAT, DoRA, a validation set, hyperparameter search, SGD,
checkpoint_dir, ...) are a 400 naming the field; an unknown model or dataset a 404; a job_uuid in use, or
cancelling a job that has ended, a 409.

The model is a served LLM (its checkpoint is trained, not the copy in memory) or a completed job's uuid
(e.g. SFT, then DPO on its result). A completed job's model is served by

    herd serve --model <herd_home>/post_training/<job_uuid>/out/merged
"""
from __future__ import annotations

import asyncio
import logging
import math
import threading
from pathlib import Path
from typing import Any

from herd.serve.errors import APIError, bad_request, not_found
from herd.serve.post_training_jobs import FILENAME, PostTrainingService

log = logging.getLogger("herd.serve")

CHECKPOINTS_PER_RUN = 10
LORA_MODULES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "output_proj": "o", "o_proj": "o",
                "q": "q", "k": "k", "v": "v", "o": "o"}  # torchtune's / HF's attention names -> herd's
MLP = ("gate", "up", "down")


# ---- requests -> the command's options -------------------------------------------------------------------


def training_options(tc: Any) -> list[str]:
    """The `herd train` options of a request's training_config (400 naming what herd cannot do)."""
    dc = tc.data_config
    if dc is None:
        raise bad_request("training_config.data_config is required: its dataset_id names the training data",
                          "training_config.data_config")
    if dc.validation_dataset_id:
        raise bad_request("validation datasets are not supported (herd reports the training loss only)",
                          "training_config.data_config.validation_dataset_id")
    if dc.train_on_input:
        raise bad_request("herd learns the assistant turns only; train_on_input must be false",
                          "training_config.data_config.train_on_input")
    steps = tc.n_epochs * tc.max_steps_per_epoch
    args = ["--epochs", str(tc.n_epochs), "--max-steps", str(steps), "--batch-size", str(dc.batch_size),
            "--grad-accum", str(tc.gradient_accumulation_steps),
            "--save-every", str(max(1, math.ceil(steps / CHECKPOINTS_PER_RUN)))]
    if tc.max_seq_len is not None:  # herd's extension (default 2048): memory and time per step
        args += ["--max-seq-len", str(tc.max_seq_len)]
    oc = tc.optimizer_config
    if oc is not None:
        if oc.optimizer_type == "sgd" or oc.optimizer_type == "adam" and oc.weight_decay > 0:
            raise bad_request(f"herd trains with AdamW ({oc.optimizer_type!r} is not supported"
                              + (" with weight decay" if oc.optimizer_type == "adam" else "") + "); use adamw",
                              "training_config.optimizer_config.optimizer_type")
        args += ["--lr", repr(oc.lr), "--weight-decay", repr(oc.weight_decay), "--warmup-steps",
                 str(oc.num_warmup_steps)]
    ec = tc.efficiency_config
    if ec is not None:
        for name in ("enable_activation_offloading", "memory_efficient_fsdp_wrap", "fsdp_cpu_offload"):
            if getattr(ec, name):
                raise bad_request(f"{name} is not supported (herd trains in one process)",
                                  f"training_config.efficiency_config.{name}")
        if ec.enable_activation_checkpointing:
            args.append("--activation-checkpointing")
    dtype = (tc.dtype or "fp32").lower()
    if dtype in ("bf16", "bfloat16"):
        args += ["--dtype", "bfloat16"]
    elif dtype not in ("fp32", "float32"):
        raise bad_request(f"dtype must be fp32 or bf16, got {tc.dtype!r}", "training_config.dtype")
    return args


def lora_options(alg: Any) -> list[str]:
    """--lora-* options of an SFT algorithm_config (None: every weight is trained)."""
    if alg is None:
        return []
    if alg.type != "LoRA":
        raise bad_request(f"algorithm_config.type {alg.type!r} is not supported; herd trains LoRA adapters or every "
                          "weight (no algorithm_config)", "algorithm_config.type")
    if alg.use_dora:
        raise bad_request("DoRA is not supported", "algorithm_config.use_dora")
    if alg.apply_lora_to_output:
        raise bad_request("LoRA on the output projection is not supported", "algorithm_config.apply_lora_to_output")
    unknown = [m for m in alg.lora_attn_modules if m not in LORA_MODULES]
    if unknown:
        raise bad_request(f"unknown lora_attn_modules {unknown}; known: q_proj, k_proj, v_proj, output_proj",
                          "algorithm_config.lora_attn_modules")
    targets = [LORA_MODULES[m] for m in alg.lora_attn_modules] + (list(MLP) if alg.apply_lora_to_mlp else [])
    if not targets:
        raise bad_request("LoRA needs lora_attn_modules or apply_lora_to_mlp", "algorithm_config.lora_attn_modules")
    args = ["--lora-rank", str(alg.rank), "--lora-alpha", repr(float(alg.alpha)),
            "--lora-targets", ",".join(dict.fromkeys(targets))]
    return args + (["--qlora", "int8"] if alg.quantize_base else [])


def dpo_options(alg: Any) -> list[str]:
    """--beta / --loss-type / --label-smoothing of a DPO algorithm_config (see DPOAlignmentConfig)."""
    beta = alg.beta if alg.beta is not None else alg.reward_scale if alg.reward_scale is not None else 0.1
    if not 0 < beta <= 1000:
        raise bad_request(f"beta (reward_scale) must be in (0, 1000], got {beta}", "algorithm_config.reward_scale")
    if alg.loss_type in ("hinge", "kto_pair"):
        raise bad_request(f"loss_type {alg.loss_type!r} is not supported; use sigmoid or ipo",
                          "algorithm_config.loss_type")
    for name in ("gamma", "reward_clip"):
        if getattr(alg, name):
            raise bad_request(f"{name} has no counterpart in herd's DPO; send 0", f"algorithm_config.{name}")
    eps = alg.epsilon or 0.0
    if not 0 <= eps < 0.5:
        raise bad_request(f"epsilon (label smoothing) must be in [0, 0.5), got {eps}", "algorithm_config.epsilon")
    return ["--beta", repr(float(beta)), "--loss-type", alg.loss_type or "sigmoid",
            "--label-smoothing", repr(float(eps))]


def training_rows(rows: list[dict[str, Any]], kind: str, dataset_id: str) -> list[dict[str, Any]]:
    """A dataset's rows as `herd train` data: SFT {messages, tools?} (question/answer rows become a user
    and an assistant turn, a messages row's `answer` the last turn), DPO {prompt, chosen, rejected, tools?}."""
    if not rows:
        raise bad_request(f"dataset {dataset_id!r} has no rows", "training_config.data_config.dataset_id")
    out = []
    for i, r in enumerate(rows):
        tools = {"tools": r["tools"]} if r.get("tools") else {}
        if kind == "dpo":
            if not all(k in r for k in ("prompt", "chosen", "rejected")):
                raise bad_request(f"dataset {dataset_id!r} row {i} has no prompt, chosen and rejected (preference "
                                  "optimization needs them; register it with purpose post-training/preference)",
                                  "training_config.data_config.dataset_id")
            out.append({"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"], **tools})
        elif isinstance(r.get("messages"), list):
            messages = list(r["messages"])
            last = messages[-1] if messages else None
            if "answer" in r and not (isinstance(last, dict) and last.get("role") == "assistant"):
                messages.append({"role": "assistant", "content": r["answer"]})
            out.append({"messages": messages, **tools})
        elif "question" in r and "answer" in r:
            out.append({"messages": [{"role": "user", "content": r["question"]},
                                     {"role": "assistant", "content": r["answer"]}]})
        else:
            raise bad_request(f"dataset {dataset_id!r} row {i} has no messages (nor question and answer) to "
                              "fine-tune on", "training_config.data_config.dataset_id")
    return out


def resolve_model(registry: Any, jobs: PostTrainingService, name: str | None, param: str) -> str:
    """The reference to train: a served LLM's checkpoint (absolute when a path), or a completed job's merged/."""
    if name is None:
        llms = registry.llms()
        if not llms:
            raise not_found("this server serves no language model to fine-tune", param)
        name = llms[0].id
    try:
        spec = registry.llm(name, param).spec
    except APIError as e:
        if e.status != 404:
            raise
        job = jobs.get(name)
        merged = jobs.job_dir(name) / "out" / "merged"
        if job is None or job.status != "completed" or not merged.is_dir():
            raise not_found(f"model {name!r} not found: name a served model ({', '.join(registry.ids) or 'none'}) "
                            "or a completed post-training job", param) from None
        return str(merged.resolve())
    if spec.lora:
        raise bad_request(f"model {name!r} is served with a LoRA adapter merged at load; train its base model or "
                          "serve a merged checkpoint", param)
    ref = Path(spec.ref).expanduser()
    return str(ref.resolve()) if ref.exists() else spec.ref


# ---- the routes' logic ----------------------------------------------------------------------------------


def service(app: Any) -> PostTrainingService:
    """The app's jobs (<herd_home>/post_training.sqlite), made and watched on first use."""
    state = app.state
    with _make_lock:
        if getattr(state, "post_training", None) is None:
            svc = PostTrainingService()
            svc.start()
            state.post_training = svc
    return state.post_training


_make_lock = threading.Lock()


def start(app: Any) -> None:
    """At start-up: where jobs exist, settle them and watch (a job left running goes on or resumes)."""
    from herd.home import herd_home

    if (herd_home(create=False) / FILENAME).exists():
        n = len(service(app).all("in_progress"))
        if n:
            log.info("post-training: %d job(s) in progress", n)


def close(app: Any) -> None:
    svc = getattr(app.state, "post_training", None)
    if svc is not None:
        svc.close()


async def submit(app: Any, datasets: Any, body: Any, kind: str) -> dict[str, Any]:
    """POST supervised-fine-tune (kind sft) / preference-optimize (dpo): checked, data exported, scheduled."""
    if body.hyperparam_search_config:
        raise bad_request("hyperparameter search is not supported; send {}", "hyperparam_search_config")
    options = training_options(body.training_config)
    if kind == "sft":
        if body.checkpoint_dir is not None:
            raise bad_request("herd keeps a job's checkpoints in <herd_home>/post_training/<job_uuid>/out; "
                              "checkpoint_dir is not supported", "checkpoint_dir")
        options += lora_options(body.algorithm_config)
        model, param = body.model, "model"
    else:
        options += dpo_options(body.algorithm_config)
        model, param = body.finetuned_model, "finetuned_model"
    jobs = await asyncio.to_thread(service, app)
    checkpoint = await asyncio.to_thread(resolve_model, app.state.registry, jobs, model, param)
    dataset_id = body.training_config.data_config.dataset_id
    if await asyncio.to_thread(datasets.get, dataset_id) is None:
        raise not_found(f"dataset {dataset_id!r} not found (register it with POST /v1/datasets)",
                        "training_config.data_config.dataset_id")
    rows, _ = await asyncio.to_thread(datasets.rows, dataset_id, 0, None)
    data = training_rows(rows, kind, dataset_id)
    job = await asyncio.to_thread(jobs.submit, body.job_uuid, kind, model or checkpoint, checkpoint,
                                  body.model_dump(mode="json"), options, data)
    return {"job_uuid": job.job_uuid}


async def list_jobs(app: Any) -> dict[str, Any]:
    jobs = await asyncio.to_thread(service, app)
    return {"data": [{"job_uuid": j.job_uuid} for j in await asyncio.to_thread(jobs.all)]}


async def status(app: Any, job_uuid: str) -> dict[str, Any]:
    jobs = await asyncio.to_thread(service, app)
    return await asyncio.to_thread(jobs.status, job_uuid)


async def artifacts(app: Any, job_uuid: str) -> dict[str, Any]:
    jobs = await asyncio.to_thread(service, app)
    job = await asyncio.to_thread(jobs.require, job_uuid)
    return {"job_uuid": job.job_uuid, "checkpoints": await asyncio.to_thread(jobs.checkpoints, job)}


async def cancel(app: Any, job_uuid: str) -> None:
    jobs = await asyncio.to_thread(service, app)
    await asyncio.to_thread(jobs.cancel, job_uuid)
