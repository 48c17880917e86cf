"""The mask-prompt warm-up (ours, `train.mask_prompt_warmup_epochs` or `_steps`): before the first
training step, train the mask prompt's maps alone on their own losses. `optim.mask_prompt_lr_scale: 0`
then keeps them as the warm-up left them while the main loop trains the rest.

With `model.fuser.mask_prompt_text: joint` the mask prompt is a per-cell logistic model (audio and
text cosines times learnt scales, plus a bias) that the mask loss trains directly on the GT grid;
nothing of it needs SAM2's decoder or memory. So a warm-up step runs only the patch embeddings and
the audio and text heads (`AuralFuser.mask_prompt_maps`) on a few whole clips, with VGGish frozen:
its embeddings and the clips' cached features are read once and kept (up to `CACHE_BYTES`), so a
frame costs about a fifteenth of a training step's (demo: 2.2 ms against 32 ms, BENCHMARKS.md). The
main loop then starts from maps that already point at the referred object.

The audio-only map (`mask_prompt_text` other than joint, e.g. AVSBench) reads its cosine detached:
AudioCon trains its heads and the mask loss only its threshold. There the warm-up adds AudioCon on
the same maps, with the map's own logits in the place of SAM2's masks to tell hard pixels from easy
ones (cells the map gets wrong), so the heads also start the main loop pointing at the sounder.

The warm-up draws its clips from its own generator and forks the global RNG, so the main loop's
data order and random streams are the same with and without it; every rank runs the same warm-up
on the same clips (identical weights, no all-reduce), and a run resumed from a checkpoint skips it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from auralsam2.config import ExperimentConfig
from auralsam2.items import ItemSource
from auralsam2.losses import audiocon_loss, mask_prompt_terms
from auralsam2.model import AuralSAM2
from auralsam2.utils import stop

__all__ = ["CACHE_BYTES", "warm_up_mask_prompt"]

CACHE_BYTES = 2 << 30  # items kept in memory across warm-up epochs (the demo's train split: ~0.2 GiB)


class _WarmupItem(NamedTuple):
    pyramid: list[Tensor]
    audio: Tensor | None  # (N, audio_dim) frozen VGGish embeddings
    text: Tensor | None  # (L, H)
    rows: Tensor  # supervised frames
    masks: Tensor  # (len(rows), S, S) GT of the supervised frames

    @property
    def nbytes(self) -> int:
        tensors = [*self.pyramid, self.audio, self.text, self.masks]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def warm_up_mask_prompt(model: AuralSAM2, train: ItemSource, cfg: ExperimentConfig, device: torch.device,
                        progress: str | None = None) -> list[float]:
    """Train the fuser's mask-prompt maps for `train.mask_prompt_warmup_steps` steps (or
    `mask_prompt_warmup_epochs` passes over the training items) of `mask_prompt_warmup_clips` whole
    training clips each (AdamW at `optim.lr`, its own state, dropped afterwards); returns the loss of
    each step. A no-op without a mask prompt. `progress`: the name on a progress bar (None: no bar)."""
    tc, loss_cfg = cfg.train, cfg.loss
    text_contrast = (loss_cfg.text_contrast, loss_cfg.text_contrast_temperature)
    fuser = model.fuser
    if not cfg.warm_up_trains_the_map or fuser.mask_prompt is None:
        return []  # (an audio map without AudioCon, the no_audiocon row: only its threshold would learn)
    audiocon = cfg.warm_up_audiocon
    if hasattr(train, "whole_clips"):  # every frame of a clip, not the training window
        train = train.whole_clips()
    n_steps = tc.mask_prompt_warmup_steps_for(len(train))
    params = [p for p in fuser.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                                  weight_decay=0.0)
    generator = torch.Generator().manual_seed(tc.seed)
    dtype = next(fuser.parameters()).dtype
    kept: dict[int, _WarmupItem] = {}
    kept_bytes = 0

    def read(index: int) -> _WarmupItem:
        nonlocal kept_bytes
        if index in kept:
            return kept[index]
        item = train.item(index)
        with torch.no_grad():  # VGGish frozen here: the main loop trains it
            audio = model.audio_embeddings(None if item.log_mel is None else item.log_mel.to(device))
        rows = torch.as_tensor(item.supervised, device=device)
        out = _WarmupItem([x.to(device=device, dtype=dtype) for x in item.pyramid], audio,
                          model.text_hidden(item.text), rows, item.masks.to(device)[rows])
        if kept_bytes + out.nbytes <= CACHE_BYTES:
            kept[index], kept_bytes = out, kept_bytes + out.nbytes
        return out

    order: list[int] = []
    losses = []
    was_training = fuser.training
    fuser.train()
    bar = None
    if progress is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_steps, unit="step", desc=f"warm-up {progress}")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for _ in range(n_steps):
            stop.check()
            total = torch.zeros((), device=device)
            for _ in range(tc.mask_prompt_warmup_clips):
                if not order:  # epochs of a seeded permutation of the training items
                    order = torch.randperm(len(train), generator=generator).tolist()
                item = read(order.pop())
                maps = fuser.mask_prompt_maps(item.pyramid, item.audio, item.text)
                mask, text = mask_prompt_terms(maps.logits[item.rows],
                                               None if maps.text_cosine is None else maps.text_cosine[item.rows],
                                               item.masks, text_contrast, loss_cfg.mask_prompt_pos_weight)
                loss = loss_cfg.mask_prompt * mask + text_contrast[0] * text
                if audiocon:
                    loss = loss + loss_cfg.audiocon.weight * audiocon_loss(
                        [maps.visual], [maps.audio], (item.masks > 0).float(), maps.logits[item.rows].detach(),
                        item.rows.tolist(), loss_cfg.audiocon, generator)
                total = total + loss / tc.mask_prompt_warmup_clips
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            losses.append(float(total.detach()))
            if bar is not None:
                bar.update()
                bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    if bar is not None:
        bar.close()
    fuser.train(was_training)
    for p in params:
        p.grad = None
    return losses
