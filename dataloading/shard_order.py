"""The order in which a rank reads the items of a shard set in one epoch: a function of (seed, epoch) only.

Two levels, as WebDataset shuffles (shards, then samples within a buffer), but without a buffer's state, so that
any batch of an epoch can be found again from (seed, epoch) alone and a run resumes mid-epoch exactly:
1. the shards are permuted by (seed, epoch) and their items laid end to end; rank r of W takes the r-th of W equal
   contiguous parts of that sequence. Ranks (and nodes) read disjoint items and each rank reads about 1/W of the
   shards; a shard is shared by two ranks only where one's part ends and the next one's begins. Every rank gets
   the same number of items (data-parallel ranks step together), and only n mod W items of an epoch are left out,
   whatever the shard sizes;
2. a rank reads its part in groups of `group` consecutive shards and permutes the items inside each group by
   (seed, epoch, rank): reads stay within `group` shards at a time (their pages in the cache, sequential-ish on a
   network filesystem) while a batch mixes items of `group` different shards.
"""

from __future__ import annotations

import numpy as np

DEFAULT_GROUP = 4  # shards read together by one rank; 4 x 512 MB stays in the page cache of any training node


def shard_permutation(n_shards: int, *, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    return (np.random.default_rng([seed, epoch]).permutation(n_shards) if shuffle else np.arange(n_shards)).tolist()


def rank_segments(items_per_shard: list[int], *, seed: int, epoch: int, rank: int, world_size: int,
                  shuffle: bool = True) -> list[tuple[int, int, int]]:
    """(shard, first item, end item) pieces of rank `rank`'s part in `epoch`, in reading order; item numbers count
    items shard by shard, as the source lists them."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    starts = np.concatenate([[0], np.cumsum(items_per_shard)]).astype(np.int64)
    per_rank = int(starts[-1]) // world_size
    lo, hi = rank * per_rank, (rank + 1) * per_rank  # this rank's part of the permuted sequence
    pieces, pos = [], 0
    for s in shard_permutation(len(items_per_shard), seed=seed, epoch=epoch, shuffle=shuffle):
        n = int(items_per_shard[s])
        a, b = max(lo, pos), min(hi, pos + n)
        if a < b:
            pieces.append((s, int(starts[s]) + a - pos, int(starts[s]) + b - pos))
        pos += n
    return pieces


def epoch_order(items_per_shard: list[int], *, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                group: int = DEFAULT_GROUP, shuffle: bool = True) -> list[int]:
    """Item numbers that `rank` reads in `epoch`: len == sum(items_per_shard) // world_size on every rank."""
    if group < 1:
        raise ValueError(f"group={group} must be >= 1")
    pieces = rank_segments(items_per_shard, seed=seed, epoch=epoch, rank=rank, world_size=world_size,
                           shuffle=shuffle)
    rng = np.random.default_rng([seed, epoch, rank])
    order: list[int] = []
    for k in range(0, len(pieces), group):
        block = np.concatenate([np.arange(a, b) for _, a, b in pieces[k:k + group]])
        order += (rng.permutation(block) if shuffle else block).tolist()
    return order


class ShardEpochSampler:
    """torch_pipeline.RankSampler's interface (set_epoch, skip, indices, iteration as (epoch, index)) over a
    shard set: the pipelines take either."""

    def __init__(self, items_per_shard: list[int], *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, group: int = DEFAULT_GROUP):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.items_per_shard = list(items_per_shard)
        self.n = sum(self.items_per_shard)
        self.rank, self.world_size, self.seed, self.shuffle, self.group = rank, world_size, seed, shuffle, group
        self.epoch = 0
        self.skip = 0  # indices of this epoch not to yield (a resume inside the epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.skip = epoch, 0

    def indices(self) -> list[int]:
        return epoch_order(self.items_per_shard, seed=self.seed, epoch=self.epoch, rank=self.rank,
                           world_size=self.world_size, group=self.group, shuffle=self.shuffle)

    def __iter__(self):
        epoch = self.epoch
        return iter([(epoch, i) for i in self.indices()[self.skip:]])

    def __len__(self) -> int:
        return self.n // self.world_size
