"""The data contract between the feature cache and the model: what one forward sees (`ClipItem`)
and a split as random-access items (`ItemSource`). Training (`auralsam2.engine`) and evaluation
(`auralsam2.evaluation`) read items; `feature_cache.dataset` serves them from the cache.

An *item* is an AVSBench clip, or one Ref-AVS expression of a clip, in one view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor

__all__ = ["ClipItem", "ItemSource"]


@dataclass
class ClipItem:
    """One forward's worth of data: an AVS clip, or one Ref-AVS expression of a clip, in one view.

    `pyramid`: 3 raw FPN levels (N, C, S/4, S/4), (N, C, S/8, S/8), (N, C, S/16, S/16).
    `log_mel` (N, Ch, 96, 64) or None; `text` (L, H) expression hidden states or None.
    `masks` (N, S, S) bool binary GT of the item (the referred object for Ref-AVS; all False for a
    null expression or a frame without GT); `labelled` (N,) bool: frames with GT in the release.
    `supervised`: frames the training loss supervises (released per-subset rule; empty for eval).
    `labels` (N, S, S) uint8 AVSS class ids (for the semantic metric) or None.
    """

    key: str
    clip_key: str
    dataset: str
    subset: str
    split: str
    category: str
    pyramid: Sequence[Tensor]
    log_mel: Tensor | None
    text: Tensor | None
    masks: Tensor
    labelled: Tensor
    supervised: list[int] = field(default_factory=list)
    expression_uid: str = ""
    is_null: bool = False
    labels: Tensor | None = None
    view: int = 0

    @property
    def n_frames(self) -> int:
        return int(self.masks.shape[0])


class ItemSource(Protocol):
    """A split as random-access items (`feature_cache.dataset.CacheItems` implements it)."""

    def __len__(self) -> int: ...

    def item_keys(self) -> list[str]:
        """Unique item ids in order (clip keys for AVS, expression uids for Ref-AVS)."""
        ...

    def null_flags(self) -> list[bool]:
        """Per item: True for a Ref-AVS null expression (scored by S only)."""
        ...

    def item(self, index: int, epoch: int = 0) -> ClipItem: ...
