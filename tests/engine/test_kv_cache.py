"""KV block bookkeeping: allocation, ref-counted prefix sharing, chained hashes, LRU eviction."""
import pytest

from herd.engine.kv_cache import NULL_BLOCK, KVCacheManager, hash_block_tokens
from herd.engine.request import Request, SamplingParams
from herd.errors import HerdError

BS = 16
SYSTEM = list(range(1000, 1000 + 3 * BS))  # a 3-block shared system prompt


def req(rid: str, tokens: list[int], max_tokens: int = 8) -> Request:
    return Request(rid, tokens, SamplingParams(max_tokens=max_tokens), arrival_time=0.0)


def admit(kv: KVCacheManager, r: Request) -> list[int]:
    """What the scheduler does for a whole prompt: hit, allocate, pretend to compute, cache."""
    hits, n = kv.get_computed_blocks(r)
    assert kv.allocate_slots(r, r.num_tokens - n, hits) is not None
    r.num_computed_tokens = r.num_tokens
    kv.cache_full_blocks(r, r.num_computed_tokens)
    return kv.block_table(r.request_id)


def test_allocation_covers_tokens_and_never_hands_out_the_null_block():
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    assert kv.num_free_blocks == 7 and kv.usage == 0.0
    r = req("a", list(range(40)))
    new = kv.allocate_slots(r, 40)
    assert len(new) == 3 and NULL_BLOCK not in new
    assert kv.block_table("a") == new
    r.num_computed_tokens = 40
    assert kv.allocate_slots(r, 1) == []  # position 40 still fits in block 3
    r.num_computed_tokens = 48
    assert len(kv.allocate_slots(r, 1)) == 1
    assert kv.num_free_blocks == 3
    assert kv.usage == pytest.approx(4 / 7)


def test_allocation_fails_without_changing_anything():
    kv = KVCacheManager(num_blocks=5, block_size=BS)  # 4 usable
    a = req("a", list(range(48)))
    kv.allocate_slots(a, 48)
    b = req("b", list(range(100, 140)))
    assert kv.allocate_slots(b, 40) is None
    assert kv.block_table("b") == [] and kv.num_free_blocks == 1
    assert len(kv.allocate_slots(b, 16)) == 1


def test_shared_system_prompt_hits_the_same_physical_blocks():
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    a = req("a", SYSTEM + [1, 2, 3])
    table_a = admit(kv, a)
    b = req("b", SYSTEM + [7, 8, 9, 10])
    hits, n = kv.get_computed_blocks(b)
    assert n == 3 * BS and hits == table_a[:3]
    kv.allocate_slots(b, b.num_tokens - n, hits)
    table_b = kv.block_table("b")
    assert table_b[:3] == table_a[:3] and table_b[3] != table_a[3]
    assert [kv.ref_count(x) for x in table_a[:3]] == [2, 2, 2]
    assert kv.ref_count(table_a[3]) == 1


def test_whole_prompt_hit_still_computes_the_last_token():
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    admit(kv, req("a", SYSTEM))
    hits, n = kv.get_computed_blocks(req("b", SYSTEM))  # exactly 3 cached blocks
    assert n == 2 * BS and len(hits) == 2
    hits, n = kv.get_computed_blocks(req("c", SYSTEM + [5]))  # one more token: all 3 blocks hit
    assert n == 3 * BS and len(hits) == 3


def test_same_block_after_a_different_prefix_does_not_hit():
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    block = list(range(50, 50 + BS))
    admit(kv, req("a", [1] * BS + block + [9]))
    hits, n = kv.get_computed_blocks(req("b", [2] * BS + block + [9]))
    assert (hits, n) == ([], 0)
    hits, n = kv.get_computed_blocks(req("c", [1] * BS + block + [9]))
    assert n == 2 * BS
    assert hash_block_tokens(hash_block_tokens(0, [1] * BS), block) != hash_block_tokens(
        hash_block_tokens(0, [2] * BS), block
    )


def test_hashes_extend_incrementally_with_generated_tokens():
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    r = req("a", list(range(20)))
    kv.get_computed_blocks(r)
    assert len(r.block_hashes) == 1
    first = r.block_hashes[0]
    r.append_output_token_ids(list(range(12)))
    kv.get_computed_blocks(r)
    assert len(r.block_hashes) == 2 and r.block_hashes[0] == first
    assert r.block_hashes[1] == hash_block_tokens(first, r.all_token_ids[BS : 2 * BS])


def test_free_returns_blocks_and_cached_blocks_stay_reusable():
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    a, b = req("a", SYSTEM + [1]), req("b", SYSTEM + [2])
    table_a, _table_b = admit(kv, a), admit(kv, b)
    kv.free(a)
    assert [kv.ref_count(x) for x in table_a[:3]] == [1, 1, 1]
    kv.free(b)
    assert kv.num_free_blocks == 15  # everything is allocatable again ...
    assert kv.num_cached_blocks == 3  # ... but the full blocks are still in the prefix cache
    hits, n = kv.get_computed_blocks(req("c", SYSTEM + [3]))
    assert hits == table_a[:3] and n == 3 * BS
    kv.allocate_slots(req("c", SYSTEM + [3]), 1, hits)
    assert kv.num_free_blocks == 11  # the 3 revived + 1 new


def test_eviction_is_lru_and_tail_blocks_go_first():
    kv = KVCacheManager(num_blocks=7, block_size=BS)  # 6 usable
    a = req("a", list(range(3 * BS + 1)))  # 3 full blocks + 1 partial
    table_a = admit(kv, a)
    b = req("b", list(range(500, 500 + BS + 1)))  # 1 full block + 1 partial
    table_b = admit(kv, b)
    kv.free(a)  # a's blocks are freed first -> least recently freed
    kv.free(b)
    # one fresh allocation at a time shows the order: the uncached tail blocks first, then
    # a's cached blocks tail to head, then b's
    order = []
    for i in range(6):
        x = req(f"x{i}", [7000 + i])
        order += kv.allocate_slots(x, 1)
    assert order == [table_a[3], table_b[1], table_a[2], table_a[1], table_a[0], table_b[0]]
    assert kv.num_cached_blocks == 0 and kv.num_free_blocks == 0


def test_eviction_keeps_the_shared_prefix_longest():
    kv = KVCacheManager(num_blocks=7, block_size=BS)  # 6 usable
    a = req("a", SYSTEM + [1])
    table_a = admit(kv, a)
    kv.free(a)
    filler = req("f", list(range(9000, 9000 + 4 * BS)))
    kv.allocate_slots(filler, 4 * BS)  # 2 never-used blocks, a's partial tail, then evicts a's block 3
    hits, n = kv.get_computed_blocks(req("b", SYSTEM + [2]))
    assert hits == table_a[:2] and n == 2 * BS  # the head of the prefix survived


def test_hit_blocks_are_not_evicted_by_their_own_allocation():
    kv = KVCacheManager(num_blocks=5, block_size=BS)  # 4 usable
    a = req("a", SYSTEM + [1])
    table_a = admit(kv, a)
    kv.free(a)
    assert kv.num_free_blocks == 4
    b = req("b", SYSTEM + list(range(BS + 1)))  # 3 hit blocks + needs 2 more: 5 > 4
    hits, n = kv.get_computed_blocks(b)
    assert len(hits) == 3
    assert kv.allocate_slots(b, b.num_tokens - n, hits) is None
    assert kv.num_free_blocks == 4 and kv.num_cached_blocks == 3  # untouched
    c = req("c", SYSTEM + list(range(BS)))  # 3 hits + 1 new = 4: fits exactly
    hits, n = kv.get_computed_blocks(c)
    new = kv.allocate_slots(c, c.num_tokens - n, hits)
    assert new is not None and new[0] not in table_a[:3]
    assert kv.block_table("c")[:3] == table_a[:3]


def test_two_requests_computing_the_same_block_do_not_corrupt_the_cache():
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    a, b = req("a", SYSTEM + [1]), req("b", SYSTEM + [2])
    kv.allocate_slots(a, a.num_tokens)
    kv.allocate_slots(b, b.num_tokens)  # both miss: computed twice
    table_a, table_b = kv.block_table("a"), kv.block_table("b")
    for r in (a, b):
        r.num_computed_tokens = r.num_tokens
        kv.cache_full_blocks(r, r.num_tokens)
    assert kv.num_cached_blocks == 3  # the first registered copy wins
    kv.free(a)
    kv.free(b)
    assert kv.num_free_blocks == 15
    hits, _ = kv.get_computed_blocks(req("c", SYSTEM + [3]))
    assert hits == table_a[:3]
    # b's duplicate copies went back as plain free blocks and are handed out before any eviction
    fresh = kv.allocate_slots(req("d", [4] * 12 * BS), 12 * BS)
    assert set(table_b[:3]) <= set(fresh) and kv.num_cached_blocks == 3


def test_prefix_caching_off_never_hits():
    kv = KVCacheManager(num_blocks=16, block_size=BS, enable_prefix_caching=False)
    admit(kv, req("a", SYSTEM + [1]))
    assert kv.get_computed_blocks(req("b", SYSTEM + [1])) == ([], 0)
    assert kv.num_cached_blocks == 0


def test_reset_prefix_cache_only_when_idle():
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    a = req("a", SYSTEM + [1])
    admit(kv, a)
    assert kv.reset_prefix_cache() is False and kv.num_cached_blocks == 3
    kv.free(a)
    assert kv.reset_prefix_cache() is True
    assert kv.num_cached_blocks == 0 and kv.num_free_blocks == 15
    assert kv.get_computed_blocks(req("b", SYSTEM + [1])) == ([], 0)


def test_too_small_pool_is_an_error():
    with pytest.raises(HerdError):
        KVCacheManager(num_blocks=1)
