"""Paged KV-cache bookkeeping: which physical blocks each request holds, and the prefix cache.

No tensors here: the runner owns the K/V memory and indexes it with the block ids handed out
below. A block holds `block_size` consecutive token positions of one sequence. A block that is
full is registered under a chained hash of its tokens (and, through the chain, of every token
before it), so a later request with the same prefix reuses it instead of recomputing it.

Block 0 is reserved as the null block: it is never handed out, so the runner may point padding
slots and padded block-table entries at it and write there harmlessly.

Free blocks live in two places: `_free` (holding nothing worth keeping, handed out first) and
`_evictable` (ref count 0 but still in the prefix cache, in LRU order: least recently freed
first). Allocation takes from `_free` and only then evicts the oldest evictable block.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque
from collections.abc import Sequence

from herd.engine.request import Request
from herd.errors import HerdError

NULL_BLOCK = 0


def hash_block_tokens(parent_hash: int, token_ids: Sequence[int]) -> int:
    """The 128-bit chained hash of one full block: blake2b over (parent hash, token ids).

    A cryptographic hash, not hash(): Python's tuple hash is 64-bit and easy to collide on
    purpose, and a collision would silently serve one user's KV to another's prompt. The cost
    is ~1 µs per block of 16 tokens, paid once per block, and it is stable across processes.
    """
    data = parent_hash.to_bytes(16, "little") + array("q", token_ids).tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=16).digest(), "little")


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    """Hands out KV blocks to requests, ref-counts shared prefix blocks, evicts LRU."""

    def __init__(self, num_blocks: int, block_size: int = 16, enable_prefix_caching: bool = True):
        if num_blocks < 2:
            raise HerdError(f"the KV cache needs at least 2 blocks (block 0 is reserved), got {num_blocks}")
        if block_size < 1:
            raise HerdError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_cnt = [0] * num_blocks
        self._block_hash: list[int | None] = [None] * num_blocks
        self._cached: dict[int, int] = {}  # block hash -> block id
        self._free: deque[int] = deque(range(1, num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._tables: dict[str, list[int]] = {}
        self._num_cached: dict[str, int] = {}  # request id -> how many of its blocks are registered

    # ---- pool state --------------------------------------------------------------------

    @property
    def num_usable_blocks(self) -> int:
        """Blocks that can be handed out (all but the null block)."""
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        """Blocks that an allocation can take: free plus evictable cached ones."""
        return len(self._free) + len(self._evictable)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks registered in the prefix cache, in use or evictable."""
        return len(self._cached)

    @property
    def usage(self) -> float:
        """Fraction of usable blocks held by requests (0..1)."""
        return 1.0 - self.num_free_blocks / self.num_usable_blocks

    def ref_count(self, block_id: int) -> int:
        """How many requests hold this block."""
        return self._ref_cnt[block_id]

    def block_table(self, request_id: str) -> list[int]:
        """A copy of the request's block ids, in position order."""
        return list(self._tables.get(request_id, ()))

    # ---- prefix cache ------------------------------------------------------------------

    def _update_hashes(self, request: Request) -> None:
        # extend the chain over any block that became full since the last call
        hashes, bs, toks = request.block_hashes, self.block_size, request.all_token_ids
        parent = hashes[-1] if hashes else 0
        for i in range(len(hashes), len(toks) // bs):
            parent = hash_block_tokens(parent, toks[i * bs : (i + 1) * bs])
            hashes.append(parent)

    def get_computed_blocks(self, request: Request) -> tuple[list[int], int]:
        """The longest prefix-cache hit in full blocks: (block ids, num computed tokens).

        Never the whole sequence: the last token is always left to compute so that the step
        produces logits for the next one. Takes no references; allocate_slots does.
        """
        if not self.enable_prefix_caching:
            return [], 0
        self._update_hashes(request)
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[int] = []
        for h in request.block_hashes[:max_blocks]:
            b = self._cached.get(h)
            if b is None:
                break
            hits.append(b)
        return hits, len(hits) * self.block_size

    def cache_full_blocks(self, request: Request, num_computed_tokens: int) -> None:
        """Register the request's blocks that became full of computed tokens in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        table = self._tables.get(request.request_id)
        if table is None:
            return
        start = self._num_cached.get(request.request_id, 0)
        end = min(num_computed_tokens // self.block_size, len(table))
        if end <= start:
            return
        self._update_hashes(request)
        for i in range(start, end):
            h, b = request.block_hashes[i], table[i]
            # two requests may compute the same block at once; the first one registered wins
            # and the other copy stays private (freed to _free, not kept as a duplicate)
            if h not in self._cached:
                self._cached[h] = b
                self._block_hash[b] = h
        self._num_cached[request.request_id] = end

    def reset_prefix_cache(self) -> bool:
        """Forget every cached block (e.g. after new weights); False, and no change, while any block is held."""
        if self._tables:
            return False
        for b in self._evictable:
            self._block_hash[b] = None
            self._free.append(b)
        self._evictable.clear()
        self._cached.clear()
        return True

    # ---- allocation --------------------------------------------------------------------

    def allocate_slots(
        self, request: Request, num_new_tokens: int, new_computed_blocks: list[int] | None = None
    ) -> list[int] | None:
        """Grow the request's block table to cover its computed tokens, the prefix-cache hit and
        num_new_tokens; returns the newly allocated block ids, or None (and no change) if the
        pool is short. new_computed_blocks (from get_computed_blocks) only on the first call.
        """
        rid = request.request_id
        table = self._tables.get(rid)
        hits = new_computed_blocks or []
        if hits and table:
            raise ValueError(f"request {rid} already holds blocks; prefix hits apply to its first allocation")
        have = len(table) if table else 0
        total = request.num_computed_tokens + len(hits) * self.block_size + num_new_tokens
        num_new_blocks = cdiv(total, self.block_size) - have - len(hits)
        # a hit block sitting in the evictable list is counted as free, but taking it uses it up
        reviving = sum(1 for b in hits if self._ref_cnt[b] == 0)
        if num_new_blocks > self.num_free_blocks - reviving:
            return None
        if table is None:
            table = self._tables[rid] = []
            self._num_cached[rid] = len(hits)
        for b in hits:  # touch before allocating so the hits themselves cannot be evicted below
            if self._ref_cnt[b] == 0:
                del self._evictable[b]
            self._ref_cnt[b] += 1
        table.extend(hits)
        new_blocks = [self._take_block() for _ in range(max(num_new_blocks, 0))]
        table.extend(new_blocks)
        return new_blocks

    def _take_block(self) -> int:
        if self._free:
            b = self._free.popleft()
        else:  # evict the least recently freed cached block
            b, _ = self._evictable.popitem(last=False)
            del self._cached[self._block_hash[b]]
            self._block_hash[b] = None
        self._ref_cnt[b] = 1
        return b

    def free(self, request: Request) -> None:
        """Release the request's blocks; cached ones stay reusable until evicted."""
        table = self._tables.pop(request.request_id, None)
        self._num_cached.pop(request.request_id, None)
        if not table:
            return
        # tail first, so within one request the head (the likeliest shared prefix) is evicted last
        for b in reversed(table):
            self._ref_cnt[b] -= 1
            if self._ref_cnt[b] == 0:
                if self._block_hash[b] is not None:
                    self._evictable[b] = None
                else:
                    self._free.append(b)
