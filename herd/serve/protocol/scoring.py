"""Llama Stack 0.2 scoring shapes (herd/serve/scoring.py), as llama-stack-client 0.2.12 sends and reads them:
scoring functions (`/v1/scoring-functions`), their params, and `/v1/scoring/score` / `score-batch`."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from herd.serve.protocol.common import RequestModel, ResponseModel

__all__ = ["AggregationFunction", "RegisterScoringFnRequest",
           "ReturnType", "ScoreBatchRequest", "ScoreBatchResponse", "ScoreRequest", "ScoreResponse",
           "ScoringFnParams", "ScoringFnResource", "ScoringFnList", "ScoringResult"]

AggregationFunction = Literal["average", "weighted_average", "median", "categorical_count", "accuracy"]
ReturnTypeName = Literal["string", "number", "boolean", "array", "object", "json", "union", "chat_completion_input",
                         "completion_input", "agent_turn_input"]
MAX_ROWS = 100_000  # rows in one score / evaluate_rows request


class ScoringFnParams(RequestModel):
    """A scoring function's params (llama-stack-client's ScoringFnParams, one shape for its three types):
    `basic` sets aggregation_functions; `regex_parser` also parsing_regexes; `llm_as_judge` also judge_model,
    prompt_template and judge_score_regexes. Requests carry them as objects that herd/serve/scoring.py checks
    against this model, so that an error names the function (`scoring_functions.<fn_id>.<field>`)."""

    type: Literal["basic", "regex_parser", "llm_as_judge"]
    aggregation_functions: list[AggregationFunction] = Field(default_factory=list)  # empty: the function's own
    parsing_regexes: list[str] = Field(default_factory=list)  # empty: the function's own
    judge_model: str | None = Field(None, min_length=1)  # None: the function's own (the first served model)
    prompt_template: str | None = None  # fields {input_query}, {expected_answer}, {generated_answer}
    judge_score_regexes: list[str] = Field(default_factory=list)  # empty: herd's score reader (1 to 10)


Params = dict[str, Any]  # a ScoringFnParams object, checked by the scoring module


class ReturnType(RequestModel):
    type: ReturnTypeName


class RegisterScoringFnRequest(RequestModel):
    """`POST /v1/scoring-functions`: a built-in with preset params under a new id (see herd/serve/scoring.py)."""

    scoring_fn_id: str = Field(min_length=1, max_length=256)
    description: str = ""
    return_type: ReturnType = Field(default_factory=lambda: ReturnType(type="number"))
    params: Params | None = None
    provider_id: str | None = None
    provider_scoring_fn_id: str | None = None


class ScoreRequest(RequestModel):
    """`POST /v1/scoring/score`: rows with `generated_answer`, `expected_answer` (and `input_query` for judges)."""

    input_rows: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_ROWS)
    scoring_functions: dict[str, Params | None] = Field(min_length=1)


class ScoreBatchRequest(RequestModel):
    """`POST /v1/scoring/score-batch`: every row of a registered dataset."""

    dataset_id: str = Field(min_length=1)
    scoring_functions: dict[str, Params | None] = Field(min_length=1)
    save_results_dataset: bool = False


# ---- responses ----------------------------------------------------------------------------------------


class ScoringFnResource(ResponseModel):
    identifier: str
    provider_id: str
    provider_resource_id: str | None = None
    type: Literal["scoring_function"] = "scoring_function"
    description: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    return_type: dict[str, Any]
    params: dict[str, Any] | None = None


class ScoringFnList(ResponseModel):
    data: list[ScoringFnResource]


class ScoringResult(ResponseModel):
    score_rows: list[dict[str, Any]]
    aggregated_results: dict[str, Any]


class ScoreResponse(ResponseModel):
    results: dict[str, ScoringResult]


class ScoreBatchResponse(ResponseModel):
    results: dict[str, ScoringResult]
    dataset_id: str | None = None  # the dataset of scored rows, with save_results_dataset
