"""The scheduler without a model: a fake runner checks the KV it would read and feeds fake tokens."""
import pytest

from herd.engine.kv_cache import NULL_BLOCK, KVCacheManager
from herd.engine.request import Request, RequestStatus, SamplingParams
from herd.engine.scheduler import Scheduler, SchedulerOutput
from herd.errors import HerdError

BS = 16
EOS = 2


def next_token(r: Request) -> int:
    """A deterministic 'model': the next token depends only on the sequence so far."""
    return 1000 + (sum(r.all_token_ids) * 31 + r.num_tokens) % 5000


class FakeRunner:
    """Writes each computed token's 'KV' (its whole prefix) into block slots, and checks that
    every token before a step's start is already in the request's blocks: that is what makes
    prefix hits, chunking and recomputation safe for a real model."""

    def __init__(self, kv: KVCacheManager):
        self.kv = kv
        self.slots: dict[tuple[int, int], tuple[int, ...]] = {}

    def run(self, out: SchedulerOutput, token=next_token) -> dict[str, list[int]]:
        bs, sampled = self.kv.block_size, {}
        for sr in out.scheduled:
            r, ids = sr.request, sr.request.all_token_ids
            end = sr.start + sr.num_new_tokens
            assert len(sr.block_ids) * bs >= end and NULL_BLOCK not in sr.block_ids
            for p in range(sr.start):
                assert self.slots[(sr.block_ids[p // bs], p % bs)] == tuple(ids[: p + 1]), (r, p)
            for p in range(sr.start, end):
                assert self.kv.ref_count(sr.block_ids[p // bs]) == 1  # never write a shared block
                self.slots[(sr.block_ids[p // bs], p % bs)] = tuple(ids[: p + 1])
            if sr.produces_token:
                sampled[r.request_id] = [token(r)]
        return sampled


def make(num_blocks=64, budget=64, max_num_seqs=8, **kw):
    kv = KVCacheManager(num_blocks, BS)
    return kv, Scheduler(kv, budget, max_num_seqs, stop_token_ids=frozenset({EOS}), **kw), FakeRunner(kv)


def req(rid, n_prompt=10, max_tokens=4, arrival=None, base=0, priority=0, **params):
    prompt = [base + 100 + i for i in range(n_prompt)]
    arrival = float(rid[1:]) if arrival is None and rid[1:].isdigit() else (arrival or 0.0)
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, **params), arrival, priority)


def drive(sched, runner, max_steps=1000, token=next_token):
    """Run to completion; returns the list of SchedulerOutputs and finished requests in order."""
    outs, done = [], []
    while sched.has_unfinished_requests():
        out = sched.schedule()
        assert out.num_batched_tokens <= sched.max_num_batched_tokens
        assert out.num_batched_tokens == sum(s.num_new_tokens for s in out.scheduled)
        assert len(out.scheduled) <= sched.max_num_seqs
        done += sched.update_from_output(out, runner.run(out, token))
        outs.append(out)
        assert len(outs) < max_steps
    return outs, done


def expected_output(prompt: list[int], max_tokens: int) -> list[int]:
    r = Request("ref", prompt, SamplingParams(max_tokens=max_tokens))
    for _ in range(max_tokens):
        r.append_output_token_ids(next_token(r))
    return r.output_token_ids


def test_budget_is_respected_every_step():
    kv, s, runner = make(num_blocks=200, budget=50, max_num_seqs=16)
    reqs = [req(f"r{i}", n_prompt=7 + 13 * i, max_tokens=5 + i) for i in range(10)]
    for r in reqs:
        s.add_request(r)
    outs, done = drive(s, runner)
    assert {r.request_id for r in done} == {r.request_id for r in reqs}
    assert all(o.num_batched_tokens <= 50 for o in outs)
    assert max(o.num_batched_tokens for o in outs) == 50  # and the budget is actually used
    for r in reqs:
        assert r.output_token_ids == expected_output(r.prompt_token_ids, r.sampling_params.max_tokens)
        assert r.status == RequestStatus.FINISHED_LENGTH and r.finish_reason == "length"
    assert kv.num_free_blocks == 199


def test_chunked_prefill_splits_a_long_prompt_and_samples_only_at_the_end():
    _kv, s, runner = make(budget=32)
    r = req("r0", n_prompt=100, max_tokens=3)
    s.add_request(r)
    chunks = []
    for _ in range(4):
        out = s.schedule()
        (sr,) = out.scheduled
        chunks.append((sr.start, sr.num_new_tokens, sr.produces_token))
        s.update_from_output(out, runner.run(out))
        assert r.num_output_tokens == (1 if sr.produces_token else 0)
    assert chunks == [(0, 32, False), (32, 32, False), (64, 32, False), (96, 4, True)]
    with pytest.raises(RuntimeError):  # a step that reaches the end must come back with a token
        out = s.schedule()
        s.update_from_output(out, {})


def test_long_prefill_threshold_caps_chunks_and_decodes_get_one_token_each():
    _kv, s, runner = make(budget=64, long_prefill_token_threshold=20)
    a, b = req("r0", n_prompt=5, max_tokens=10), req("r1", n_prompt=8, max_tokens=10)
    s.add_request(a)
    s.add_request(b)
    s.update_from_output(out := s.schedule(), runner.run(out))  # both prefills in one step
    assert [x.num_new_tokens for x in out.scheduled] == [5, 8]
    c = req("r2", n_prompt=50, max_tokens=2)
    s.add_request(c)
    out = s.schedule()
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("r0", 1), ("r1", 1), ("r2", 20)]
    s.update_from_output(out, runner.run(out))
    out = s.schedule()
    assert [x.num_new_tokens for x in out.scheduled] == [1, 1, 20]


def test_fcfs_admission_order_and_max_num_seqs():
    _kv, s, runner = make(budget=256, max_num_seqs=2)
    reqs = [req(f"r{i}", max_tokens=3) for i in range(5)]
    for r in reversed(reqs):  # added in reverse, but ordered by arrival time
        s.add_request(r)
    outs, done = drive(s, runner)
    first_seen = []
    for o in outs:
        assert s.num_running <= 2
        first_seen += [x.request.request_id for x in o.scheduled if x.start == 0]
    assert first_seen == [f"r{i}" for i in range(5)]
    assert [r.request_id for r in done] == [f"r{i}" for i in range(5)]


def test_priority_goes_before_arrival():
    _kv, s, _runner = make(budget=256, max_num_seqs=1)
    s.add_request(req("r0", max_tokens=2, priority=1))
    s.add_request(req("r1", max_tokens=2, priority=0))
    out = s.schedule()
    assert [x.request.request_id for x in out.scheduled] == ["r1"]


def test_preemption_on_a_tiny_pool_recomputes_and_finishes_every_token():
    # 6 usable blocks; each request grows to 10 + 40 - 1 = 49 tokens = 4 blocks: they cannot all fit
    kv, s, runner = make(num_blocks=7, budget=64, max_num_seqs=4)
    reqs = [req(f"r{i}", n_prompt=10, max_tokens=40, base=1000 * i) for i in range(3)]
    for r in reqs:
        s.add_request(r)
    outs, comebacks, preempted_at = [], [], None
    while s.has_unfinished_requests():
        out = s.schedule()
        if "r2" in out.preempted:
            preempted_at = reqs[2].num_tokens
        for x in out.scheduled:
            if x.request is reqs[2] and preempted_at is not None:
                comebacks.append((x.start, x.num_new_tokens, x.request.num_tokens))
                preempted_at = None
        s.update_from_output(out, runner.run(out))
        outs.append(out)
        assert len(outs) < 500
    preempted = [rid for o in outs for rid in o.preempted]
    assert preempted and preempted[0] == "r2"  # the latest arrival goes first
    assert reqs[0].num_preemptions == 0 and reqs[2].num_preemptions >= 1
    for r in reqs:
        assert r.output_token_ids == expected_output(r.prompt_token_ids, 40)
    # it came back recomputing prompt + the output it had (from a block boundary if its blocks
    # were still cached), all in one step since the budget allows it
    start, n, total = comebacks[0]
    assert total > 10 and start % BS == 0 and start + n == total
    assert kv.num_free_blocks == 6 and kv.usage == 0.0


def test_the_least_important_running_request_is_preempted():
    _kv, s, runner = make(num_blocks=7, budget=64, max_num_seqs=4)
    low = req("r0", n_prompt=10, max_tokens=40, priority=5)
    s.add_request(low)
    s.update_from_output(out := s.schedule(), runner.run(out))
    high = req("r1", n_prompt=10, max_tokens=40, base=500, priority=0)
    s.add_request(high)
    s.update_from_output(out := s.schedule(), runner.run(out))
    assert [r.request_id for r in s.running] == ["r1", "r0"]  # served by priority, not arrival
    while not (out := s.schedule()).preempted:
        s.update_from_output(out, runner.run(out))
    assert out.preempted == ["r0"] and [x.request for x in out.scheduled] == [high]
    s.update_from_output(out, runner.run(out))
    drive(s, runner)
    assert high.num_preemptions == 0 and low.output_token_ids == expected_output(low.prompt_token_ids, 40)


def test_preempted_request_goes_back_to_the_front_of_waiting():
    _kv, s, runner = make(num_blocks=7, budget=64, max_num_seqs=2)
    reqs = [req(f"r{i}", n_prompt=10, max_tokens=40, base=1000 * i) for i in range(3)]
    for r in reqs:
        s.add_request(r)
    while not (out := s.schedule()).preempted:
        s.update_from_output(out, runner.run(out))
    assert out.preempted == ["r1"]
    assert [x.request.request_id for x in out.scheduled] == ["r0"]  # no admissions in a preempting step
    assert [r.request_id for r in s.waiting] == ["r1", "r2"]
    assert reqs[1].status == RequestStatus.PREEMPTED and reqs[1].num_computed_tokens == 0


def test_prefix_cache_shares_a_system_prompt_through_the_scheduler():
    kv, s, runner = make(num_blocks=32, budget=256)
    system = list(range(5000, 5000 + 3 * BS))
    a = Request("a", system + [1, 2, 3], SamplingParams(max_tokens=2), 0.0)
    s.add_request(a)
    s.update_from_output(out := s.schedule(), runner.run(out))
    b = Request("b", system + [7, 8], SamplingParams(max_tokens=2), 1.0)
    s.add_request(b)
    out = s.schedule()
    sb = next(x for x in out.scheduled if x.request is b)
    assert sb.start == 3 * BS and sb.num_new_tokens == 2 and b.num_cached_tokens == 3 * BS
    assert sb.block_ids[:3] == kv.block_table("a")[:3]
    assert all(kv.ref_count(x) == 2 for x in sb.block_ids[:3])
    s.update_from_output(out, runner.run(out))
    drive(s, runner)
    assert kv.num_free_blocks == 31 and kv.num_cached_blocks == 3
    # a third request with the same prompt as a: everything but the last token is cached
    c = Request("c", system, SamplingParams(max_tokens=1), 2.0)
    s.add_request(c)
    out = s.schedule()
    assert (out.scheduled[0].start, out.scheduled[0].num_new_tokens) == (2 * BS, BS)
    s.update_from_output(out, runner.run(out))


def test_abort_frees_every_block():
    kv, s, runner = make(num_blocks=40, budget=32, max_num_seqs=2)
    reqs = [req(f"r{i}", n_prompt=30, max_tokens=50, base=100 * i) for i in range(4)]
    for r in reqs:
        s.add_request(r)
    for _ in range(5):
        s.update_from_output(out := s.schedule(), runner.run(out))
    assert s.num_running >= 1 and s.num_waiting >= 1 and kv.num_free_blocks < 39
    aborted = s.abort([r.request_id for r in reqs] + ["nope"])
    assert {r.request_id for r in aborted} == {r.request_id for r in reqs}
    assert all(r.status == RequestStatus.FINISHED_ABORTED and r.finish_reason == "abort" for r in reqs)
    assert kv.num_free_blocks == 39 and not s.has_unfinished_requests()
    assert sorted(s.schedule().finished_ids) == sorted(r.request_id for r in reqs)
    assert s.abort("r0") == []


def test_abort_between_schedule_and_update_is_ignored():
    kv, s, runner = make()
    r = req("r0")
    s.add_request(r)
    out = s.schedule()
    sampled = runner.run(out)
    s.abort("r0")
    assert s.update_from_output(out, sampled) == []
    assert r.output_token_ids == [] and kv.num_free_blocks == 63


def test_stop_token_and_max_tokens_finish_and_free():
    kv, s, runner = make()
    a, b = req("r0", max_tokens=100), req("r1", max_tokens=3)
    c = req("r2", max_tokens=5, stop_token_ids=(77,))
    d = req("r3", max_tokens=4, ignore_eos=True)
    for r in (a, b, c, d):
        s.add_request(r)
    outs, _done = drive(s, runner, token=lambda r: EOS if r.num_output_tokens == 1 and r.request_id != "r2" else 77)
    assert a.output_token_ids == [77, EOS] and a.status == RequestStatus.FINISHED_STOPPED
    assert a.stop_reason == EOS and a.finish_reason == "stop"
    assert b.output_token_ids == [77, EOS] and b.status == RequestStatus.FINISHED_STOPPED
    assert c.output_token_ids == [77] and c.stop_reason == 77
    assert d.output_token_ids == [77, EOS, 77, 77] and d.status == RequestStatus.FINISHED_LENGTH
    assert kv.num_free_blocks == 63 and s.requests == {}
    assert set(outs[-1].finished_ids) | set(s.schedule().finished_ids) >= {"r3"}


def test_engine_side_stop_frees_blocks():
    kv, s, runner = make()
    r = req("r0", max_tokens=50)
    s.add_request(r)
    for _ in range(3):
        s.update_from_output(out := s.schedule(), runner.run(out))
    s.finish_request("r0", RequestStatus.FINISHED_STOPPED, reason="###")
    assert r.finish_reason == "stop" and r.stop_reason == "###" and kv.num_free_blocks == 63
    assert s.schedule().finished_ids == ["r0"] and not s.has_unfinished_requests()


def test_max_model_len_ends_with_length():
    _kv, s, runner = make(max_model_len=14)
    r = req("r0", n_prompt=10, max_tokens=100)
    s.add_request(r)
    drive(s, runner)
    assert r.num_tokens == 14 and r.status == RequestStatus.FINISHED_LENGTH
    with pytest.raises(HerdError, match="context"):
        s.add_request(req("r1", n_prompt=14))


def test_a_request_that_can_never_fit_is_refused():
    kv, s, runner = make(num_blocks=5)  # 4 usable blocks = 64 slots
    s.add_request(req("r0", n_prompt=60, max_tokens=5))  # 64 computed tokens: fits exactly
    with pytest.raises(HerdError, match="KV blocks"):
        s.add_request(req("r1", n_prompt=60, max_tokens=6))
    with pytest.raises(HerdError, match="already"):
        s.add_request(req("r0"))
    with pytest.raises(HerdError, match="empty"):
        s.add_request(Request("e", [], SamplingParams()))
    drive(s, runner)
    assert kv.num_free_blocks == 4
