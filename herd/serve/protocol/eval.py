"""Llama Stack 0.2 eval and synthetic-data-generation shapes (herd/serve/eval_routes.py and
synthetic_data.py), as llama-stack-client 0.2.12 sends and reads them: benchmarks, benchmark_config,
jobs, EvaluateResponse, and `/v1/synthetic-data-generation/generate` (herd's extension fields sent with
`extra_body`)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from herd.serve.protocol.common import Int, RequestModel, ResponseModel
from herd.serve.protocol.scoring import MAX_ROWS, Params, ScoringResult
from herd.serve.protocol.stack import StackMessage, StackSamplingParams

__all__ = ["AgentCandidate", "BenchmarkConfig", "BenchmarkList", "BenchmarkResource", "EvalJob",
           "EvaluateResponse", "EvaluateRowsRequest", "ModelCandidate", "RegisterBenchmarkRequest", "RunEvalRequest",
           "SyntheticDataRequest", "SyntheticDataResponse"]

JobStatus = Literal["completed", "in_progress", "failed", "scheduled", "cancelled"]
FilteringFunction = Literal["none", "random", "top_k", "top_p", "top_k_top_p", "sigmoid"]


class RegisterBenchmarkRequest(RequestModel):
    """`POST /v1/eval/benchmarks`: a dataset and the scoring functions that grade it."""

    benchmark_id: str = Field(min_length=1, max_length=256)
    dataset_id: str = Field(min_length=1)
    scoring_functions: list[str] = Field(min_length=1)
    metadata: dict[str, Any] | None = None
    provider_benchmark_id: str | None = None
    provider_id: str | None = None


class ModelCandidate(RequestModel):
    type: Literal["model"]
    model: str = Field(min_length=1)
    sampling_params: StackSamplingParams = Field(default_factory=StackSamplingParams)
    system_message: StackMessage | None = None


class AgentCandidate(RequestModel):
    type: Literal["agent"]
    config: dict[str, Any] = Field(default_factory=dict)


class BenchmarkConfig(RequestModel):
    eval_candidate: Annotated[ModelCandidate | AgentCandidate, Field(discriminator="type")]
    scoring_params: dict[str, Params] = Field(default_factory=dict)
    num_examples: Int | None = Field(None, ge=1)


class RunEvalRequest(RequestModel):
    """`POST /v1/eval/benchmarks/{id}/jobs`."""

    benchmark_config: BenchmarkConfig


class EvaluateRowsRequest(RequestModel):
    """`POST /v1/eval/benchmarks/{id}/evaluations`: generate for these rows and score, synchronously."""

    benchmark_config: BenchmarkConfig
    input_rows: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_ROWS)
    scoring_functions: list[str] = Field(min_length=1)


class SyntheticDataRequest(RequestModel):
    """`POST /v1/synthetic-data-generation/generate`: `dialogs` is a batch of prompts (each user message one
    prompt, with the system messages before it); the rest after `model` are herd's extensions."""

    dialogs: list[StackMessage] = Field(min_length=1, max_length=1024)
    filtering_function: FilteringFunction = "none"
    model: str | None = Field(None, min_length=1)
    num_candidates: Int = Field(4, ge=1, le=64)  # responses generated per prompt
    top_k: Int = Field(1, ge=1, le=64)  # kept per prompt by top_k, top_k_top_p and random
    top_p: float = Field(0.9, gt=0, le=1)  # the reward mass kept by top_p and top_k_top_p
    sigmoid_threshold: float = Field(0.5, ge=0, le=1)  # sigmoid: the reward kept with probability 1/2
    sigmoid_temperature: float = Field(0.1, gt=0, le=10)  # sigmoid: how soft the threshold is
    seed: Int = Field(0, ge=0, le=2**63 - 1)
    temperature: float = Field(0.8, ge=0, le=2)  # of the candidates (the judge is greedy)
    max_tokens: Int = Field(256, ge=1, le=1 << 20)
    judge_model: str | None = Field(None, min_length=1)  # None: the generating model
    judge_max_tokens: Int = Field(256, ge=1, le=1 << 20)


# ---- responses ----------------------------------------------------------------------------------------


class BenchmarkResource(ResponseModel):
    identifier: str
    provider_id: str
    provider_resource_id: str | None = None
    type: Literal["benchmark"] = "benchmark"
    dataset_id: str
    scoring_functions: list[str]
    metadata: dict[str, Any] = Field(default_factory=dict)


class BenchmarkList(ResponseModel):
    data: list[BenchmarkResource]


class EvalJob(ResponseModel):
    """A job's id and status; herd adds when it ran, its progress and (failed) why."""

    job_id: str
    status: JobStatus


class EvaluateResponse(ResponseModel):
    generations: list[dict[str, Any]]
    scores: dict[str, ScoringResult]


class SyntheticDataResponse(ResponseModel):
    synthetic_data: list[dict[str, Any]]
    statistics: dict[str, Any] | None = None
