"""What the training loop reads: the frozen SAM2 and the items (`TrainingData`), in the released
`DistributedSampler` order (`DataOrder`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from auralsam2.items import ItemSource

__all__ = ["DataOrder", "TrainingData"]


@dataclass
class TrainingData:
    """Everything `train` reads: the frozen SAM2 the cache was built with, the training items and
    the items used for model selection (the `val` split, or `test` when `select_on: test`)."""

    sam2: nn.Module
    train: ItemSource
    select: ItemSource | None = None
    select_split: str | None = None


class DataOrder:
    """The released `DistributedSampler(shuffle=True)` order: a permutation of all items per epoch
    (seeded by seed + epoch, the same on every rank), padded by wrap-around to a multiple of the
    world size, rank r taking every world-th item from r. A pure function of (seed, epoch): resuming
    needs only the step counter.

    An optimizer step takes the next `items_per_step` items of the rank's sequence
    (`train.clips_per_step` x `train.accumulate_steps`; the last step of an epoch may take fewer), so
    which items are seen, and in which order, does not depend on how a step is split."""

    def __init__(self, n_items: int, seed: int, rank: int = 0, world: int = 1, items_per_step: int = 1) -> None:
        if n_items < 1:
            raise ValueError("no training items")
        if items_per_step < 1:
            raise ValueError(f"items_per_step must be >= 1, got {items_per_step}")
        self.n, self.seed, self.rank, self.world = n_items, seed, rank, world
        self.items_per_epoch = math.ceil(n_items / world)  # per rank
        self.items_per_step = items_per_step
        self.steps_per_epoch = math.ceil(self.items_per_epoch / items_per_step)
        self._epoch, self._indices = -1, []

    def index(self, epoch: int, position: int) -> int:
        """The item at `position` (0 .. items_per_epoch - 1) of this rank's epoch."""
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
            total = self.items_per_epoch * self.world
            perm = (perm * math.ceil(total / self.n))[:total]
            self._epoch, self._indices = epoch, perm[self.rank :: self.world]
        return self._indices[position]

    def step_items(self, epoch: int, step: int) -> list[tuple[int, int]]:
        """(position in the epoch, item index) of the items of optimizer step `step` of `epoch`."""
        start = step * self.items_per_step
        stop = min(start + self.items_per_step, self.items_per_epoch)
        return [(position, self.index(epoch, position)) for position in range(start, stop)]
