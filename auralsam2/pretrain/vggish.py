"""Pretraining a small VGGish on labelled sounds, standing in for AudioSet-pretrained VGGish.

AuralSAM2 starts from the AudioSet-pretrained VGGish (`vggish-10086976.pth`): its embeddings
already name sound categories, so the fuser only has to relate them to what is on screen. The
synthetic demo's tiny VGGish has no such weights; this trains it the way VGGish was trained, as a
multi-label sound-event classifier on log-mel examples (one 0.96 s example, one label set), with a
linear head that is dropped afterwards. The data source is any iterator of `(examples (B, 1, 96, 64),
labels (B, K))` batches; `auralsam2 pretrain-tiny-vggish` feeds synthetic-world mixtures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from auralsam2.audio import VGGish
from auralsam2.pretrain.history import StepHistory


def pretrain_vggish(vggish: VGGish, batches: Iterator[tuple[Tensor, Tensor]], steps: int, num_classes: int,
                    lr: float = 3e-3, weight_decay: float = 1e-4, log_every: int = 50,
                    on_log: Callable[[int, dict[str, float]], None] | None = None
                    ) -> tuple[list[dict[str, float]], nn.Linear]:
    """Multi-label BCE training of `vggish` + a linear head for `steps` batches (AdamW, cosine lr).

    Returns the logged averages and the linear head (a probe for `evaluate_vggish`; not saved)."""
    head = nn.Linear(vggish.config.embedding_dim, num_classes)
    params = [*vggish.parameters(), *head.parameters()]
    for p in params:
        p.requires_grad_(True)
    vggish.train()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    history = StepHistory(steps, log_every, on_log)
    for step in range(steps):
        examples, labels = next(batches)
        logits = head(vggish(examples))
        loss = F.binary_cross_entropy_with_logits(logits, labels.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            exact = ((logits > 0) == labels.bool()).all(-1).float().mean()
        history.add(step, {"loss": float(loss.detach()), "exact_match": float(exact)})
    vggish.eval()
    return history.history, head


@torch.no_grad()
def evaluate_vggish(vggish: VGGish, head: nn.Linear, batches: list[tuple[Tensor, Tensor]]) -> dict[str, float]:
    """Held-out exact-match rate (every category right) and per-label accuracy of the linear probe."""
    exact, per_label, n = 0.0, 0.0, 0
    for examples, labels in batches:
        pred = head(vggish(examples)) > 0
        exact += float((pred == labels.bool()).all(-1).float().sum())
        per_label += float((pred == labels.bool()).float().mean(-1).sum())
        n += len(labels)
    return {"exact_match": exact / n, "label_accuracy": per_label / n, "examples": n}
