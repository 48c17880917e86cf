"""What the training loop reads: the frozen SAM2 and the items (`TrainingData`), in the released
`DistributedSampler` order (`DataOrder`), step by step (`StepReader`: the next step's items read,
pinned and copied to the GPU in the background while this step computes)."""

from __future__ import annotations

import dataclasses
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import torch
from torch import nn

from auralsam2.items import ClipItem, ItemSource

__all__ = ["DataOrder", "StepReader", "TrainingData", "item_to_device"]


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

    def step_items(self, epoch: int, step: int) -> list[int]:
        """The item indices of optimizer step `step` of `epoch`, in order."""
        start = step * self.items_per_step
        stop = min(start + self.items_per_step, self.items_per_epoch)
        return [self.index(epoch, position) for position in range(start, stop)]


def item_to_device(item: ClipItem, device: torch.device, pin: bool = False) -> ClipItem:
    """The item with the tensors the model reads on `device`; `pin`: through pinned host memory and
    a non-blocking copy (on the current CUDA stream)."""
    def move(x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None:
            return None
        if pin and x.device.type == "cpu":
            x = x.pin_memory()
        return x.to(device, non_blocking=pin)

    return dataclasses.replace(item, pyramid=tuple(move(x) for x in item.pyramid), log_mel=move(item.log_mel),
                               text=move(item.text), masks=move(item.masks))


class StepReader:
    """The items of optimizer step s (`DataOrder.step_items`), on the device.

    With `prefetch`, taking step s starts reading step s + 1 in one background thread (the cache
    reader's memory-mapped reads and decoding release the GIL); on a GPU it pins them and copies them
    on a side stream, which the compute stream waits for when they are taken. The items do not
    depend on prefetching (a pure function of the step). `idle()` blocks until the background read
    is done: call it before anything else reads the same cache (validation)."""

    def __init__(self, source: ItemSource, order: DataOrder, device: torch.device, prefetch: bool) -> None:
        self.source, self.order, self.device = source, order, device
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="prefetch") if prefetch else None
        self._stream = torch.cuda.Stream(device) if prefetch and device.type == "cuda" else None
        self._pending: tuple[int, Future] | None = None
        self.wait_s = 0.0  # time the loop spent waiting for items (reading them itself, or the prefetch)

    def _read(self, step: int) -> list[ClipItem]:
        epoch, in_epoch = divmod(step, self.order.steps_per_epoch)
        indices = self.order.step_items(epoch, in_epoch)
        if self._stream is not None:  # the reader's own GPU work (expanding cached levels) goes there too
            with torch.cuda.stream(self._stream):
                return [item_to_device(self.source.item(i, epoch), self.device, pin=True) for i in indices]
        return [item_to_device(self.source.item(i, epoch), self.device) for i in indices]

    def take(self, step: int, next_step: int | None) -> list[ClipItem]:
        """Step `step`'s items; starts reading `next_step`'s (None: nothing follows)."""
        started = time.perf_counter()
        pending, self._pending = self._pending, None
        items = pending[1].result() if pending is not None and pending[0] == step else self._read(step)
        if self._stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self._stream)
            for item in items:  # the side stream's memory is now used on this one
                for x in (*item.pyramid, item.log_mel, item.text, item.masks):
                    if x is not None:
                        x.record_stream(current)
        self.wait_s += time.perf_counter() - started
        if self._pool is not None and next_step is not None:
            self._pending = (next_step, self._pool.submit(self._read, next_step))
        return items

    def idle(self) -> None:
        if self._pending is not None:
            wait([self._pending[1]])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
