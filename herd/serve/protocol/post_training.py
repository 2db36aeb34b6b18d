"""Llama Stack 0.2 post-training shapes (herd/serve/post_training.py), as llama-stack-client 0.2.12 sends
and reads them: supervised fine-tuning and preference optimization requests, job status and artifacts."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from herd.serve.protocol.common import Int, RequestModel, ResponseModel

__all__ = ["DPOAlignmentConfig", "LoraFinetuningConfig", "PostTrainingJob", "PostTrainingJobArtifacts",
           "PostTrainingJobList", "PostTrainingJobStatus", "PreferenceOptimizeRequest", "QATFinetuningConfig",
           "SupervisedFineTuneRequest", "TrainingCheckpoint", "TrainingConfigIn", "TrainingDataConfig",
           "TrainingEfficiencyConfig", "TrainingJobRequest", "TrainingOptimizerConfig"]

# a job's id names its directory under $HERD_HOME/post_training: no separators, no leading dot
JobUUID = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")]


class TrainingDataConfig(RequestModel):
    dataset_id: str = Field(min_length=1)
    batch_size: Int = Field(ge=1, le=4096)
    shuffle: bool
    data_format: Literal["instruct", "dialog"]
    validation_dataset_id: str | None = None
    packed: bool | None = False
    train_on_input: bool | None = False


class TrainingOptimizerConfig(RequestModel):
    optimizer_type: Literal["adam", "adamw", "sgd"]
    lr: float = Field(gt=0, le=10)
    weight_decay: float = Field(ge=0, le=10)
    num_warmup_steps: Int = Field(ge=0, le=10_000_000)


class TrainingEfficiencyConfig(RequestModel):
    enable_activation_checkpointing: bool | None = False
    enable_activation_offloading: bool | None = False
    memory_efficient_fsdp_wrap: bool | None = False
    fsdp_cpu_offload: bool | None = False


class TrainingConfigIn(RequestModel):
    n_epochs: Int = Field(ge=1, le=10_000)
    max_steps_per_epoch: Int = Field(1, ge=1, le=100_000_000)
    gradient_accumulation_steps: Int = Field(1, ge=1, le=4096)
    max_validation_steps: Int | None = Field(1, ge=0)
    data_config: TrainingDataConfig | None = None
    optimizer_config: TrainingOptimizerConfig | None = None
    efficiency_config: TrainingEfficiencyConfig | None = None
    dtype: str | None = None  # Llama Stack's default is bf16; herd trains in float32 unless asked
    max_seq_len: Int | None = Field(None, ge=16, le=1 << 20)  # herd's extension: tokens per packed block


class LoraFinetuningConfig(RequestModel):
    type: Literal["LoRA"] = "LoRA"
    lora_attn_modules: list[str]
    apply_lora_to_mlp: bool
    apply_lora_to_output: bool
    rank: Int = Field(ge=1, le=4096)
    alpha: float = Field(gt=0, le=1_000_000)
    use_dora: bool | None = False
    quantize_base: bool | None = False


class QATFinetuningConfig(RequestModel):
    type: Literal["QAT"] = "QAT"
    quantizer_name: str
    group_size: Int


AlgorithmConfig = Annotated[LoraFinetuningConfig | QATFinetuningConfig, Field(discriminator="type")]


class SupervisedFineTuneRequest(RequestModel):
    """POST /v1/post-training/supervised-fine-tune."""

    job_uuid: JobUUID
    training_config: TrainingConfigIn
    hyperparam_search_config: dict[str, Any] = Field(default_factory=dict)
    logger_config: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None  # a served model id (None: the first served LLM) or a completed job's uuid
    checkpoint_dir: str | None = None
    algorithm_config: AlgorithmConfig | None = None


class DPOAlignmentConfig(RequestModel):
    """DPO's options: `beta` / `loss_type` (Llama Stack >= 0.2.13), or the four fields of 0.2.12's client
    (reward_scale is taken as beta, epsilon as label smoothing; gamma and reward_clip must be 0)."""

    beta: float | None = Field(None, gt=0, le=1000)
    loss_type: Literal["sigmoid", "hinge", "ipo", "kto_pair"] | None = None
    reward_scale: float | None = None
    reward_clip: float | None = None
    epsilon: float | None = None
    gamma: float | None = None


class PreferenceOptimizeRequest(RequestModel):
    """POST /v1/post-training/preference-optimize."""

    job_uuid: JobUUID
    finetuned_model: str = Field(min_length=1)  # the model to train (as `model` above)
    algorithm_config: DPOAlignmentConfig
    training_config: TrainingConfigIn
    hyperparam_search_config: dict[str, Any] = Field(default_factory=dict)
    logger_config: dict[str, Any] = Field(default_factory=dict)


class TrainingJobRequest(RequestModel):
    """POST /v1/post-training/job/cancel."""

    job_uuid: str = Field(min_length=1)


# ---- responses ---------------------------------------------------------------------------------------


class PostTrainingJob(ResponseModel):
    job_uuid: str


class PostTrainingJobList(ResponseModel):
    data: list[PostTrainingJob]


class TrainingCheckpoint(ResponseModel):
    identifier: str
    created_at: str
    epoch: int
    post_training_job_id: str
    path: str
    training_metrics: dict[str, Any] | None = None


class PostTrainingJobStatus(ResponseModel):
    job_uuid: str
    status: Literal["scheduled", "in_progress", "completed", "failed", "cancelled"]
    scheduled_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    resources_allocated: dict[str, Any] | None = None
    checkpoints: list[TrainingCheckpoint] = Field(default_factory=list)


class PostTrainingJobArtifacts(ResponseModel):
    job_uuid: str
    checkpoints: list[TrainingCheckpoint] = Field(default_factory=list)
