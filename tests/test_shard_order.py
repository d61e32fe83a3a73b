"""The epoch order over shards (dataloading/shard_order.py): disjoint across ranks, a function of (seed, epoch)."""

from __future__ import annotations

import numpy as np
import pytest
from fastdino.dataloading.shard_order import ShardEpochSampler, epoch_order, rank_segments

SIZES = [7, 5, 9, 6, 8, 3, 7, 4, 6, 5, 8]  # odd, uneven shards: the last one of a real set is short


def _shard_of(item: int) -> int:
    return int(np.searchsorted(np.cumsum(SIZES), item, side="right"))


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 11, 13])
def test_ranks_read_disjoint_items_equal_counts_and_few_shards(world_size):
    orders = [epoch_order(SIZES, seed=3, epoch=1, rank=r, world_size=world_size) for r in range(world_size)]
    flat = [i for o in orders for i in o]
    assert len(flat) == len(set(flat))  # disjoint: no item on two ranks, none twice
    assert all(len(o) == sum(SIZES) // world_size for o in orders)  # equal, only n mod W left out
    for o in orders:  # a rank touches its share of the shards, plus at most one at each end
        assert len({_shard_of(i) for i in o}) <= -(-len(SIZES) // world_size) + 2
    if world_size == 1:
        assert sorted(flat) == list(range(sum(SIZES)))


def test_order_is_a_function_of_seed_and_epoch():
    a = epoch_order(SIZES, seed=0, epoch=2, rank=1, world_size=2)
    assert a == epoch_order(SIZES, seed=0, epoch=2, rank=1, world_size=2)
    assert a != epoch_order(SIZES, seed=0, epoch=3, rank=1, world_size=2)
    assert a != epoch_order(SIZES, seed=1, epoch=2, rank=1, world_size=2)


def test_reads_stay_within_a_group_of_shards():
    order = epoch_order(SIZES, seed=0, epoch=0, group=2)
    pieces = rank_segments(SIZES, seed=0, epoch=0, rank=0, world_size=1)
    assert [s for s, _, _ in pieces] != sorted(s for s, _, _ in pieces)  # shards permuted
    pos = 0
    for k in range(0, len(pieces), 2):
        n = sum(b - a for _, a, b in pieces[k:k + 2])
        assert {_shard_of(i) for i in order[pos:pos + n]} == {s for s, _, _ in pieces[k:k + 2]}
        pos += n
    assert order != sorted(order)  # items shuffled inside each group


def test_no_shuffle_reads_in_shard_order():
    assert epoch_order(SIZES, seed=0, epoch=5, shuffle=False) == list(range(sum(SIZES)))


def test_sampler_yields_the_order_and_skips_for_a_resume():
    sampler = ShardEpochSampler(SIZES, rank=1, world_size=3, seed=4)
    sampler.set_epoch(2)
    full = list(sampler)
    assert [i for _, i in full] == epoch_order(SIZES, seed=4, epoch=2, rank=1, world_size=3)
    assert {e for e, _ in full} == {2} and len(full) == len(sampler) == sum(SIZES) // 3
    sampler.skip = 10
    assert list(sampler) == full[10:]
    sampler.set_epoch(3)
    assert sampler.skip == 0


def test_bad_rank_is_refused():
    with pytest.raises(ValueError, match="rank=2"):
        rank_segments(SIZES, seed=0, epoch=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="rank=3"):
        ShardEpochSampler(SIZES, rank=3, world_size=2)
