"""Llama Stack scoring, eval and synthetic-data-generation routes, with the real `llama-stack-client` 0.2.12
against a real `herd serve` process on its own HERD_HOME serving a tiny random checkpoint (its answers are
gibberish, which is what the judge tests want): the basic scoring functions on rows whose scores are worked
out by hand, score-batch on a registered dataset (and its saved results), an LLM judge that answers garbage
(counted, not a crash), registered scoring functions, benchmarks + run_eval jobs (status, result, cancel;
a job cut by a server crash is reported failed), evaluate_rows, synthetic data with every filtering function
(the sizes as defined in herd/serve/synthetic_data.py, the filters also on hand-made rewards), and bad input
(404 for unknown functions / benchmarks / datasets / models / jobs, 400 for bad params, 409 for conflicts)."""
from __future__ import annotations

import json
import math
import random
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servekit import ServerProcess, home_server, stack_client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinymodels import build_tiny_llama3

from herd.serve.synthetic_data import select

MODEL_ID = "tiny-llama"
QA = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(6)]
GREEDY = {"strategy": {"type": "greedy"}, "max_tokens": 6}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama3(tmp_path_factory.mktemp("ckpt") / MODEL_ID, max_seq_len=2048)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def server(tiny: Path, home: Path) -> Iterator[ServerProcess]:
    srv = home_server(tiny, home)
    yield srv
    srv.stop(kill=True)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Any:
    c = stack_client(server)
    c.datasets.register(purpose="eval/question-answer", source={"type": "rows", "rows": QA}, dataset_id="qa")
    return c


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    return r.json()["error"]


# ---- scoring ---------------------------------------------------------------------------------------------

ROWS = [
    {"input_query": "Capital of France?", "expected_answer": "Paris", "generated_answer": "Paris"},
    {"input_query": "Capital of Italy?", "expected_answer": "Rome", "generated_answer": "It is Rome."},
    {"input_query": "2+2?", "expected_answer": "4", "generated_answer": "five"},
    {"input_query": "Pick one.", "expected_answer": "C", "generated_answer": "Thinking... Answer: C", "weight": 3},
    {"input_query": "Pick one.", "expected_answer": "B", "generated_answer": "The best answer is D", "weight": 1},
    {"input_query": "Choisis.", "expected_answer": "A", "generated_answer": "Réponse : A"},
]
# by hand: equality matches row 0 only; subset_of rows 0, 1, 3 ("C" is in "Thinking... Answer: C") and 5
# ("A" is in "Réponse : A"); the multiple-choice parser reads C (3), D (4), A (5) and nothing from rows 0-2
EQUALITY = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
SUBSET = [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
MC = [0.0, 0.0, 0.0, 1.0, 0.0, 1.0]


def test_basic_scoring_functions_give_the_scores_worked_out_by_hand(client):
    r = client.scoring.score(input_rows=ROWS, scoring_functions={
        "basic::equality": None,
        "basic::subset_of": {"type": "basic", "aggregation_functions": ["accuracy", "average", "median",
                                                                         "categorical_count", "weighted_average"]},
        "basic::regex_parser_multiple_choice_answer": None})
    eq, sub, mc = (r.results[k] for k in ("basic::equality", "basic::subset_of",
                                           "basic::regex_parser_multiple_choice_answer"))
    assert [x["score"] for x in eq.score_rows] == EQUALITY
    assert eq.aggregated_results == {"accuracy": {"accuracy": 1 / 6, "num_correct": 1.0, "num_total": 6}}
    assert [x["score"] for x in sub.score_rows] == SUBSET
    # weights 1, 1, 1, 3, 1, 1: (1 + 1 + 3 + 1) / 8
    assert sub.aggregated_results == {"accuracy": {"accuracy": 4 / 6, "num_correct": 4.0, "num_total": 6},
                                      "average": {"average": 4 / 6}, "median": {"median": 1.0},
                                      "categorical_count": {"categorical_count": {"0.0": 2, "1.0": 4}},
                                      "weighted_average": {"weighted_average": 6 / 8}}
    assert [x["score"] for x in mc.score_rows] == MC
    assert [x["parsed_answer"] for x in mc.score_rows] == [None, None, None, "C", "D", "A"]
    assert mc.aggregated_results["accuracy"]["accuracy"] == pytest.approx(2 / 6)
    # the parser's own regexes, replaced by the request's
    r = client.scoring.score(input_rows=[{"expected_answer": "B", "generated_answer": "Letter=B"}],
                             scoring_functions={"basic::regex_parser_multiple_choice_answer": {
                                 "type": "regex_parser", "parsing_regexes": [r"Letter=([A-D])"],
                                 "aggregation_functions": []}})
    res = r.results["basic::regex_parser_multiple_choice_answer"]
    assert res.score_rows[0]["score"] == 1.0 and res.aggregated_results["accuracy"]["num_correct"] == 1.0


def test_score_batch_scores_a_registered_dataset_and_saves_the_results(client):
    rows = [{"question": q["question"], "answer": q["answer"], "generated_answer": g}
            for q, g in zip(QA[:3], ["0", "The sum is 2", "seven"])]
    client.datasets.register(purpose="eval/question-answer", source={"type": "rows", "rows": rows},
                             dataset_id="qa-answered")
    r = client.scoring.score_batch(dataset_id="qa-answered", save_results_dataset=True,
                                   scoring_functions={"basic::equality": None, "basic::subset_of": None})
    # `answer` stands in for expected_answer: "0" == "0"; "2" is in "The sum is 2"
    assert [x["score"] for x in r.results["basic::equality"].score_rows] == [1.0, 0.0, 0.0]
    assert [x["score"] for x in r.results["basic::subset_of"].score_rows] == [1.0, 1.0, 0.0]
    saved = client.datasets.iterrows(r.dataset_id).data
    assert r.dataset_id.startswith("qa-answered-scored-") and len(saved) == 3
    assert saved[1]["scores"] == {"basic::equality": {"score": 0.0}, "basic::subset_of": {"score": 1.0}}
    assert client.datasets.retrieve(r.dataset_id).purpose == "eval/question-answer"


def test_a_judge_that_answers_garbage_is_counted_not_a_crash(client):
    rows = ROWS[:3]
    r = client.scoring.score(input_rows=rows, scoring_functions={"llm-as-judge::base": {
        "type": "llm_as_judge", "judge_model": MODEL_ID, "judge_score_regexes": [r"Score: (\d+)"],
        "prompt_template": "Q: {input_query}\nExpected: {expected_answer}\nGot: {generated_answer}\nScore 1-10?",
        "aggregation_functions": ["average", "categorical_count"]}})
    res = r.results["llm-as-judge::base"]
    assert [x["score"] for x in res.score_rows] == [None, None, None]
    assert all(isinstance(x["judge_feedback"], str) and x["judge_feedback"] for x in res.score_rows)
    assert res.aggregated_results == {"average": {"average": None}, "categorical_count": {"categorical_count":
                                      {"None": 3}}, "num_unparseable": 3}
    # the defaults: the first served model judges with herd's template and score reader
    r = client.scoring.score(input_rows=rows[:1], scoring_functions={"llm-as-judge::base": None})
    res = r.results["llm-as-judge::base"]
    assert res.aggregated_results["num_unparseable"] == sum(x["score"] is None for x in res.score_rows)


def test_scoring_functions_list_get_register_unregister(client, http):
    ids = [f.identifier for f in client.scoring_functions.list()]
    assert ids[:4] == ["basic::equality", "basic::subset_of", "basic::regex_parser_multiple_choice_answer",
                       "llm-as-judge::base"]
    eq = client.scoring_functions.retrieve("basic::equality")
    assert eq.provider_id == "basic" and eq.params.type == "basic" and eq.params.aggregation_functions == ["accuracy"]
    judge = client.scoring_functions.retrieve("llm-as-judge::base")
    assert judge.provider_id == "llm-as-judge" and judge.params.judge_model == MODEL_ID
    letter = {"type": "regex_parser", "parsing_regexes": [r"Letter: ([A-D])"], "aggregation_functions": ["accuracy"]}
    client.scoring_functions.register(scoring_fn_id="herd::letter", description="Letter: X",
                                      return_type={"type": "number"}, params=letter)
    client.scoring_functions.register(scoring_fn_id="herd::letter", description="Letter: X",
                                      return_type={"type": "number"}, params=letter)  # the same again: a no-op
    fn = client.scoring_functions.retrieve("herd::letter")
    assert fn.provider_resource_id == "basic::regex_parser_multiple_choice_answer"
    r = client.scoring.score(input_rows=[{"expected_answer": "D", "generated_answer": "Letter: D"}],
                             scoring_functions={"herd::letter": None})
    assert r.results["herd::letter"].score_rows[0]["score"] == 1.0
    client.scoring_functions.register(scoring_fn_id="herd::contains", description="subset",
                                      return_type={"type": "number"}, provider_scoring_fn_id="subset-of")
    assert "herd::contains" in [f.identifier for f in client.scoring_functions.list()]
    err = error(http.post("/v1/scoring-functions", json={"scoring_fn_id": "herd::letter", "description": "other",
                                                         "return_type": {"type": "number"}, "params": letter}), 409)
    assert "another definition" in err["message"]
    err = error(http.post("/v1/scoring-functions", json={"scoring_fn_id": "basic::equality", "description": "",
                                                         "return_type": {"type": "number"},
                                                         "provider_scoring_fn_id": "equality"}), 409)
    assert "built-in" in err["message"]
    assert http.delete("/v1/scoring-functions/herd::contains").status_code == 200
    error(http.get("/v1/scoring-functions/herd::contains"), 404)
    error(http.delete("/v1/scoring-functions/basic::equality"), 400)


# ---- eval ----------------------------------------------------------------------------------------------------


def config(max_tokens: int = 6, **kw: Any) -> dict[str, Any]:
    return {"eval_candidate": {"type": "model", "model": MODEL_ID,
                               "sampling_params": {**GREEDY, "max_tokens": max_tokens}, **kw.pop("candidate", {})},
            "scoring_params": {}, **kw}


def wait_job(client: Any, benchmark_id: str, job_id: str, want: str = "completed", timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while (status := client.eval.jobs.status(job_id, benchmark_id=benchmark_id).status) != want:
        assert status not in {"completed", "failed", "cancelled"} - {want}, status
        assert time.monotonic() < end, f"{job_id} still {status}"
        time.sleep(0.1)


def test_benchmark_run_eval_and_its_result_agree_with_scoring_the_generations(client, http):
    client.benchmarks.register(benchmark_id="qa-bench", dataset_id="qa",
                               scoring_functions=["basic::equality", "basic::subset_of"], metadata={"n": 6})
    b = client.benchmarks.retrieve("qa-bench")
    assert b.dataset_id == "qa" and b.scoring_functions == ["basic::equality", "basic::subset_of"]
    assert "qa-bench" in [x.identifier for x in client.benchmarks.list()]
    job = client.eval.run_eval("qa-bench", benchmark_config={**config(), "num_examples": 4,
                                                             "scoring_params": {"basic::subset_of": {
                                                                 "type": "basic", "aggregation_functions": ["average"]}}})
    assert job.status == "scheduled" and job.job_id
    wait_job(client, "qa-bench", job.job_id)
    st = http.get(f"/v1/eval/benchmarks/qa-bench/jobs/{job.job_id}").json()
    assert st["progress"] == {"generated": 4, "total": 4} and st["completed_at"]
    res = client.eval.jobs.retrieve(job.job_id, benchmark_id="qa-bench")
    assert len(res.generations) == 4 and all(isinstance(g["generated_answer"], str) for g in res.generations)
    direct = client.scoring.score(
        input_rows=[{"expected_answer": q["answer"], "generated_answer": g["generated_answer"]}
                    for q, g in zip(QA, res.generations)],
        scoring_functions={"basic::equality": None, "basic::subset_of": {"type": "basic",
                                                                          "aggregation_functions": ["average"]}})
    for fn in ("basic::equality", "basic::subset_of"):
        assert res.scores[fn].score_rows == direct.results[fn].score_rows
        assert res.scores[fn].aggregated_results == direct.results[fn].aggregated_results
    assert set(res.scores["basic::subset_of"].aggregated_results) == {"average"}
    # evaluate_rows on the same rows, greedy: the same answers, now
    now = client.eval.evaluate_rows("qa-bench", benchmark_config=config(), input_rows=QA[:4],
                                    scoring_functions=["basic::equality"])
    assert now.generations == res.generations
    assert now.scores["basic::equality"].score_rows == res.scores["basic::equality"].score_rows


def test_evaluate_rows_reads_chat_inputs_and_a_system_message(client):
    rows = [{"chat_completion_input": json.dumps([{"role": "user", "content": "Say A."}]), "expected_answer": "A"},
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say B."}],
             "answer": "B"},
            {"input_query": "Say C.", "expected_answer": "C"}]
    res = client.eval.evaluate_rows("qa-bench", benchmark_config=config(4, candidate={"system_message": {
        "role": "system", "content": "Answer with one letter."}}), input_rows=rows,
        scoring_functions=["basic::equality", "basic::subset_of"])
    assert len(res.generations) == 3
    assert [x["score"] for x in res.scores["basic::equality"].score_rows] == \
        [float(g["generated_answer"] == r.get("expected_answer", r.get("answer"))) for g, r in zip(res.generations, rows)]


def test_jobs_run_one_at_a_time_and_cancel(client, http):
    long = config(2000)
    first = client.eval.run_eval("qa-bench", benchmark_config=long)
    second = client.eval.run_eval("qa-bench", benchmark_config=long)
    wait_job(client, "qa-bench", first.job_id, "in_progress")
    assert client.eval.jobs.status(second.job_id, benchmark_id="qa-bench").status == "scheduled"
    client.eval.jobs.cancel(second.job_id, benchmark_id="qa-bench")
    client.eval.jobs.cancel(first.job_id, benchmark_id="qa-bench")
    for job in (first, second):
        assert client.eval.jobs.status(job.job_id, benchmark_id="qa-bench").status == "cancelled"
        assert "cancelled" in error(http.get(f"/v1/eval/benchmarks/qa-bench/jobs/{job.job_id}/result"), 409)["message"]
        assert "has ended" in error(http.delete(f"/v1/eval/benchmarks/qa-bench/jobs/{job.job_id}"), 409)["message"]
    error(http.get(f"/v1/eval/benchmarks/other/jobs/{first.job_id}"), 404)  # a job belongs to its benchmark
    # the engine is free again: a short job completes
    job = client.eval.run_eval("qa-bench", benchmark_config={**config(), "num_examples": 1})
    wait_job(client, "qa-bench", job.job_id)


# ---- synthetic data --------------------------------------------------------------------------------------

DIALOGS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."},
           {"role": "user", "content": "Name a fruit."}]
SDG_OPTIONS = {"num_candidates": 3, "top_k": 2, "top_p": 0.5, "max_tokens": 6, "judge_max_tokens": 8, "seed": 7}


def nucleus_size(rewards: list[float], p: float) -> int:
    ranked = sorted(rewards, reverse=True)
    total = sum(ranked)
    mass = 0.0
    for n, r in enumerate(ranked, 1):
        mass += r / total if total else 1 / len(ranked)
        if mass >= p - 1e-9:
            return n
    return len(ranked)


@pytest.mark.parametrize("how", ["none", "random", "top_k", "top_p", "top_k_top_p", "sigmoid"])
def test_synthetic_data_generation_with_each_filtering_function(client, how):
    r = client.synthetic_data_generation.generate(dialogs=DIALOGS, filtering_function=how, model=MODEL_ID,
                                                  extra_body=SDG_OPTIONS)
    st = r.statistics
    assert st["num_prompts"] == 2 and st["generated"] == 6 and st["filtering_function"] == how
    assert 0 <= st["unparseable_judgements"] <= 6 and st["model"] == st["judge_model"] == MODEL_ID
    assert len(r.synthetic_data) == 2
    assert r.synthetic_data[0]["dialog"] == DIALOGS[:2]
    assert r.synthetic_data[1]["dialog"] == [DIALOGS[0], DIALOGS[2]]
    for i, entry in enumerate(r.synthetic_data):
        rewards = st["rewards"][i]
        kept = entry["scored_generations"]
        got = [g["candidate"] for g in kept]
        assert len(set(got)) == len(got) and all(0 <= j < 3 for j in got)
        assert [g["score"] for g in kept] == sorted((g["score"] for g in kept), reverse=True)  # best first
        assert all(g["score"] == rewards[g["candidate"]] and g["message"]["role"] == "assistant" for g in kept)
        expected = {"none": 3, "random": 2, "top_k": 2, "top_p": nucleus_size(rewards, 0.5),
                    "top_k_top_p": nucleus_size(sorted(rewards, reverse=True)[:2], 0.5)}
        if how == "sigmoid":
            rng = random.Random(f"7/{i}")
            want = {j for j in range(3) if rng.random() < 1 / (1 + math.exp(-(rewards[j] - 0.5) / 0.1))}
            assert set(got) == want
        else:
            assert len(got) == expected[how]
        if how == "top_k":  # the best two (ties: the earlier candidate)
            assert got == sorted(range(3), key=lambda j: (-rewards[j], j))[:2]
    assert st["kept"] == sum(len(e["scored_generations"]) for e in r.synthetic_data)


def test_filtering_functions_on_hand_made_rewards():
    rewards = [0.1, 0.9, 0.5, 0.5]  # best first: 1, 2, 3 (ties: the earlier), 0

    def sel(how: str, **kw: Any) -> list[int]:
        args = {"top_k": 2, "top_p": 0.5, "threshold": 0.5, "temperature": 0.1, "rng": random.Random("s"), **kw}
        return select(rewards, how, **args)

    assert sel("none") == [1, 2, 3, 0]
    assert sel("top_k") == [1, 2] and sel("top_k", top_k=9) == [1, 2, 3, 0]
    assert sel("top_p") == [1, 2]  # shares .45, .25: .70 >= .5
    assert sel("top_p", top_p=0.45) == [1] and sel("top_p", top_p=1.0) == [1, 2, 3, 0]
    assert sel("top_k_top_p", top_p=0.6) == [1]  # over the best two: .9 / 1.4 = .64
    assert sel("top_k_top_p", top_p=0.7) == [1, 2]
    picked = random.Random("s").sample(range(4), 2)
    assert sel("random") == [j for j in [1, 2, 3, 0] if j in picked]
    draws = random.Random("s")
    want = [j for j in range(4) if draws.random() < 1 / (1 + math.exp(-(rewards[j] - 0.5) / 0.1))]
    assert sorted(sel("sigmoid")) == sorted(want)
    assert select([0.0, 0.0, 0.0], "top_p", top_k=1, top_p=0.5, threshold=0.5, temperature=0.1,
                  rng=random.Random(0)) == [0, 1]  # equal shares when nothing scored


# ---- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,path,body,status,param", [
    ("post", "/v1/scoring/score", {"input_rows": [{"generated_answer": "a", "expected_answer": "a"}],
                                   "scoring_functions": {"basic::nope": None}}, 404, "scoring_functions.basic::nope"),
    ("post", "/v1/scoring/score", {"input_rows": [{"generated_answer": "a"}], "scoring_functions":
                                   {"basic::equality": None}}, 400, "input_rows[0]"),
    ("post", "/v1/scoring/score", {"input_rows": [{"generated_answer": 3, "expected_answer": "3"}],
                                   "scoring_functions": {"basic::subset_of": None}}, 400, "input_rows[0].generated_answer"),
    ("post", "/v1/scoring/score", {"input_rows": [], "scoring_functions": {"basic::equality": None}}, 400, "input_rows"),
    ("post", "/v1/scoring/score", {"input_rows": [{"generated_answer": "a", "expected_answer": "a"}],
                                   "scoring_functions": {"basic::equality": {"type": "basic",
                                                                             "aggregation_functions": ["mode"]}}},
     400, "scoring_functions.basic::equality.aggregation_functions[0]"),
    ("post", "/v1/scoring/score", {"input_rows": [{"generated_answer": "a", "expected_answer": "a"}],
                                   "scoring_functions": {"basic::regex_parser_multiple_choice_answer": {
                                       "type": "regex_parser", "parsing_regexes": ["Answer: [A-D]"],
                                       "aggregation_functions": []}}},
     400, "scoring_functions.basic::regex_parser_multiple_choice_answer.parsing_regexes[0]"),
    ("post", "/v1/scoring/score", {"input_rows": [{"input_query": "q", "generated_answer": "a", "expected_answer": "a"}],
                                   "scoring_functions": {"llm-as-judge::base": {
                                       "type": "llm_as_judge", "judge_model": MODEL_ID, "judge_score_regexes": [],
                                       "prompt_template": "{question}", "aggregation_functions": []}}},
     400, "scoring_functions.llm-as-judge::base.prompt_template"),
    ("post", "/v1/scoring/score", {"input_rows": [{"input_query": "q", "generated_answer": "a", "expected_answer": "a"}],
                                   "scoring_functions": {"llm-as-judge::base": {
                                       "type": "llm_as_judge", "judge_model": "gpt-9", "judge_score_regexes": [],
                                       "aggregation_functions": []}}},
     404, "scoring_functions.llm-as-judge::base.judge_model"),
    ("post", "/v1/scoring/score-batch", {"dataset_id": "missing", "scoring_functions": {"basic::equality": None},
                                         "save_results_dataset": False}, 404, "dataset_id"),
    ("post", "/v1/scoring/score-batch", {"dataset_id": "qa", "scoring_functions": {"basic::equality": None},
                                         "save_results_dataset": False}, 400, "dataset 'qa' row 0"),
    ("post", "/v1/scoring-functions", {"scoring_fn_id": "x", "description": "", "return_type": {"type": "number"},
                                       "params": {"type": "basic", "aggregation_functions": []}},
     400, "provider_scoring_fn_id"),
    ("post", "/v1/eval/benchmarks", {"benchmark_id": "b", "dataset_id": "missing",
                                     "scoring_functions": ["basic::equality"]}, 404, "dataset_id"),
    ("post", "/v1/eval/benchmarks", {"benchmark_id": "b", "dataset_id": "qa", "scoring_functions": ["nope"]},
     404, "scoring_functions[0]"),
    ("get", "/v1/eval/benchmarks/missing", None, 404, "benchmark_id"),
    ("post", "/v1/eval/benchmarks/missing/jobs", {"benchmark_config": config()}, 404, "benchmark_id"),
    ("get", "/v1/eval/benchmarks/qa-bench/jobs/evaljob-missing", None, 404, "job_id"),
    ("post", "/v1/eval/benchmarks/qa-bench/jobs", {"benchmark_config": config(0)}, 400,
     "benchmark_config.eval_candidate.sampling_params"),
    ("post", "/v1/eval/benchmarks/qa-bench/jobs", {"benchmark_config": {**config(), "eval_candidate": {
        "type": "agent", "config": {}}}}, 400, "benchmark_config.eval_candidate.type"),
    ("post", "/v1/eval/benchmarks/qa-bench/jobs", {"benchmark_config": {**config(), "eval_candidate": {
        "type": "model", "model": "gpt-9", "sampling_params": GREEDY}}}, 404, "benchmark_config.eval_candidate.model"),
    ("post", "/v1/eval/benchmarks/qa-bench/jobs", {"benchmark_config": {**config(), "scoring_params": {
        "llm-as-judge::base": {"type": "basic", "aggregation_functions": []}}}}, 400, "benchmark_config.scoring_params"),
    ("post", "/v1/eval/benchmarks/qa-bench/jobs", {"benchmark_config": {**config(), "scoring_params": {
        "basic::equality": {"type": "judge"}}}}, 400, "benchmark_config.scoring_params.basic::equality.type"),
    ("post", "/v1/scoring-functions", {"scoring_fn_id": "x", "description": "", "return_type": {"type": "number"},
                                       "params": {"type": "regex_parser", "parsing_regexes": "A"}},
     400, "params.parsing_regexes"),
    ("post", "/v1/eval/benchmarks/qa-bench/evaluations", {"benchmark_config": config(), "input_rows": [
        {"expected_answer": "x"}], "scoring_functions": ["basic::equality"]}, 400, "input_rows[0]"),
    ("post", "/v1/eval/benchmarks/qa-bench/evaluations", {"benchmark_config": config(), "input_rows": [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "answer": "a"}],
        "scoring_functions": ["basic::equality"]}, 400, "input_rows[0]"),
    ("post", "/v1/synthetic-data-generation/generate", {"dialogs": [{"role": "assistant", "content": "hi"}],
                                                        "filtering_function": "none"}, 400, "dialogs[0].role"),
    ("post", "/v1/synthetic-data-generation/generate", {"dialogs": [{"role": "user", "content": "hi"}],
                                                        "filtering_function": "best"}, 400, "filtering_function"),
    ("post", "/v1/synthetic-data-generation/generate", {"dialogs": [{"role": "user", "content": "hi"}],
                                                        "filtering_function": "none", "model": "gpt-9"}, 404, "model"),
])
def test_bad_input_is_a_clear_4xx(client, http, method, path, body, status, param):
    if "qa-bench" in path and "qa-bench" not in [b.identifier for b in client.benchmarks.list()]:
        client.benchmarks.register(benchmark_id="qa-bench", dataset_id="qa",
                                   scoring_functions=["basic::equality", "basic::subset_of"], metadata={"n": 6})
    r = http.request(method.upper(), path, json=body)
    err = error(r, status)
    assert err["param"] == param, err
    assert "Traceback" not in r.text


def test_the_client_raises_the_llama_stack_errors(client):
    from llama_stack_client import BadRequestError, NotFoundError

    with pytest.raises(NotFoundError):
        client.scoring.score(input_rows=ROWS[:1], scoring_functions={"basic::nope": None})
    with pytest.raises(NotFoundError):
        client.benchmarks.retrieve("missing")
    with pytest.raises(BadRequestError):
        client.synthetic_data_generation.generate(dialogs=[{"role": "system", "content": "only a system"}],
                                                  filtering_function="none")


# ---- a job cut by a crash ----------------------------------------------------------------------------------


def test_a_job_cut_by_a_server_crash_is_reported_failed_and_registrations_persist(server, client, tiny, home):
    if "qa-bench" not in [b.identifier for b in client.benchmarks.list()]:
        client.benchmarks.register(benchmark_id="qa-bench", dataset_id="qa", scoring_functions=["basic::equality"])
    client.scoring_functions.register(scoring_fn_id="herd::kept", description="", return_type={"type": "number"},
                                      provider_scoring_fn_id="basic::equality")
    job = client.eval.run_eval("qa-bench", benchmark_config=config(2000))
    wait_job(client, "qa-bench", job.job_id, "in_progress")
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(30)
    again = home_server(tiny, home)
    try:
        c = stack_client(again)
        st = c.eval.jobs.status(job.job_id, benchmark_id="qa-bench")
        assert st.status == "failed" and "server stopped" in st.error
        assert "qa-bench" in [b.identifier for b in c.benchmarks.list()]
        assert c.scoring_functions.retrieve("herd::kept").provider_resource_id == "basic::equality"
    finally:
        again.stop(kill=True)
