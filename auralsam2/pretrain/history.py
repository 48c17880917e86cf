"""The loss history of a pretraining recipe: per-step stats averaged over logging windows."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

__all__ = ["StepHistory"]


class StepHistory:
    """Means of the per-step stats over every `every` steps (and the last one): kept in `history`
    (the recipe's record) and handed to `on_log(step, means)`."""

    def __init__(self, steps: int, every: int, on_log: Callable[[int, dict[str, float]], None] | None) -> None:
        self.steps, self.every, self.on_log = steps, every, on_log
        self.history: list[dict[str, float]] = []
        self._window: list[Mapping[str, float]] = []

    def add(self, step: int, stats: Mapping[str, float]) -> None:
        """`stats` of 0-based optimizer step `step`."""
        self._window.append(stats)
        done = step + 1
        if done % self.every == 0 or done == self.steps:
            mean = {k: float(np.mean([w[k] for w in self._window])) for k in self._window[0]} | {"step": done}
            self.history.append(mean)
            self._window = []
            if self.on_log:
                self.on_log(done, mean)
