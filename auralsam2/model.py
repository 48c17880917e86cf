"""The composed AuralSAM2 (paper Fig. 2; released `model/mymodel.py`): frozen SAM2 + AuralFuser.

One forward path per clip (N frames, one clip per forward as released):

    frames (N, 3, S, S) --frozen image encoder--> Pyramid   (or a cached Pyramid / CompactPyramid)
    log-mel (N, Ch, 96, 64) --AudioEncoder (VGGish)--> (N, Ch*E)   (or precomputed embeddings)
    expression --frozen TextEncoder--> (25, H)              (Ref-AVS; or precomputed hidden states)
    AuralFuser(pyramid, audio, text) --> prompts (pyramid order) --reversed--> decoder stage order
    track_clip (SAM2 memory over the clip, prompted decoder) --> N FrameOutputs

SAM2 (and the text encoder) stay frozen and in eval mode even after `.train()`, the released
regime; only the fuser and, when `trainable`, VGGish learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from auralsam2.audio import AudioEncoder
from auralsam2.backbone import (
    CompactPyramid,
    DecoderPrompts,
    FrameOutput,
    PointInputs,
    Pyramid,
    encode_frames,
    expand_compact,
    freeze_sam2,
    point_inputs_from_clicks,
    track_clip,
    track_clips,
)
from auralsam2.decoding import DecodeMode, decode_masks
from auralsam2.fuser import AuralFuser, FuserOutput
from auralsam2.losses import (
    AudioConConfig,
    SegLossWeights,
    audiocon_loss,
    mask_prompt_terms,
    segmentation_loss,
)
from auralsam2.text import TextEmbeddings, TextEncoder

__all__ = ["AuralSAM2", "ClipOutput", "ClipPrediction", "clip_loss"]

class ClipOutput(NamedTuple):
    """`forward_clip` result: per-frame decoder outputs (frame-index order) and the fuser outputs."""

    frames: list[FrameOutput]
    fuser: FuserOutput | None  # None for plain SAM2 (`use_fuser=False`)
    cond_frame: int

    @property
    def high_res_masks(self) -> Tensor:
        """(N, 3, S, S) multimask logits."""
        return torch.cat([f.high_res_masks for f in self.frames])

    @property
    def ious(self) -> Tensor:
        """(N, 3) predicted IoUs."""
        return torch.cat([f.ious for f in self.frames])

    @property
    def object_score_logits(self) -> Tensor:
        """(N, 1)."""
        return torch.cat([f.object_score_logits for f in self.frames])

    @property
    def best_low_res_masks(self) -> Tensor:
        """(N, 1, S/4, S/4) best-IoU low-res logits (the released `multistep_pred_masks`)."""
        return torch.cat([f.low_res_masks[:, f.best_index : f.best_index + 1] for f in self.frames])


class ClipPrediction(NamedTuple):
    """`predict_clip` result: `logits` (N, S, S) of the decoded mask, `ious` (N, 3),
    `object_score_logits` (N, 1), `mode` the decoding mode used. Foreground = `logits > 0`."""

    logits: Tensor
    ious: Tensor
    object_score_logits: Tensor
    mode: str


def clip_loss(
    out: ClipOutput,
    masks: Tensor,
    supervised_frames: Sequence[int],
    audiocon: AudioConConfig | None = None,
    seg_weights: SegLossWeights | None = None,
    generator: torch.Generator | None = None,
    mask_weight: float = 5.0,
    text_contrast: tuple[float, float] = (0.0, 0.1),
    mask_pos_weight: float = 1.0,
) -> dict[str, Tensor]:
    """Named loss terms of one clip; `total` is what to back-propagate.

    `masks` (N, S, S) GT of every frame at model resolution (foreground = value > 0; rows of
    unsupervised frames are never read), `supervised_frames` from `losses.supervised_frames`.
    Returns `focal`, `dice`, `iou`, `object_score` (unweighted, summed over supervised frames),
    `seg` (weighted segmentation total), `audiocon` (unweighted contrastive term, computed on the
    supervised frames), `mask` (BCE of the fuser's mask-prompt logits against the GT on their grid,
    0 without a mask prompt: it calibrates the mask threshold; its positive cells weighted
    `mask_pos_weight`), `text` (the text map's contrast,
    `text_contrast = (weight, temperature)`; 0 without a text map or at weight 0) and
    `total = seg + audiocon.weight * audiocon + mask_weight * mask + weight * text`.
    """
    cfg = audiocon or AudioConConfig()
    frames = list(supervised_frames)
    if not frames:
        raise ValueError("supervised_frames is empty: at least one frame must be supervised")
    size = out.frames[0].high_res_masks.shape[-2:]
    if masks.shape[0] != len(out.frames) or masks.shape[-2:] != size:
        raise ValueError(
            f"masks must be ({len(out.frames)}, {size[0]}, {size[1]}) (every frame at model resolution), "
            f"got {tuple(masks.shape)}"
        )
    rows = torch.as_tensor(frames, device=masks.device)
    targets = (masks[rows] > 0).float()
    seg = segmentation_loss(out.high_res_masks[rows], out.ious[rows], out.object_score_logits[rows], targets,
                            seg_weights)
    terms = {k: seg[k] for k in ("focal", "dice", "iou", "object_score")}
    terms["seg"] = seg["total"]
    if cfg.mode == "off" or cfg.weight == 0:
        terms["audiocon"] = seg["total"].new_zeros(())
    else:
        terms["audiocon"] = audiocon_loss(
            out.fuser.proj_visual, out.fuser.proj_audio, targets, out.best_low_res_masks[rows], frames, cfg,
            generator,
        )
    mask_logits, text_cosine = out.fuser.mask_prompt, out.fuser.text_cosine
    terms["mask"], terms["text"] = mask_prompt_terms(None if mask_logits is None else mask_logits[rows],
                                                     None if text_cosine is None else text_cosine[rows],
                                                     targets, text_contrast, mask_pos_weight)
    terms["total"] = (terms["seg"] + cfg.weight * terms["audiocon"] + mask_weight * terms["mask"]
                      + text_contrast[0] * terms["text"])
    return terms


def _decoder_prompts(fused: FuserOutput, detach_mask: bool = False, binary: bool = False
                     ) -> tuple[DecoderPrompts, Tensor | None]:
    """The fuser's prompts in decoder stage order (deepest first, as released) and its per-frame mask
    prompt as probabilities (None without one). `detach_mask` (`mask_prompt_text: joint`): the mask
    prompt learns from its own loss only; the segmentation loss through SAM2's frozen mask encoder
    undoes what it learnt (BENCHMARKS.md). `binary` (`mask_prompt_binary`): 1 where the logit is
    positive, 0 elsewhere."""
    prompts = DecoderPrompts(dense=None if fused.dense is None else fused.dense[::-1],
                             sparse=None if fused.sparse is None else fused.sparse[::-1])
    if fused.mask_prompt is None:
        return prompts, None
    if binary:
        return prompts, (fused.mask_prompt.detach() > 0).to(fused.mask_prompt.dtype)
    return prompts, (fused.mask_prompt.detach() if detach_mask else fused.mask_prompt).sigmoid()


class AuralSAM2(nn.Module):
    """SAM2 that hears: `forward_clip` for training, `predict_clip` for inference.

    `sam2_model`: a SAM2Base (`build_sam2_model`); it is frozen and pinned to eval here.
    `fuser`: `AuralFuser` with `config.dim == sam2_model.hidden_dim`. `audio_encoder`: its
    `output_dim` must equal `fuser.config.audio_dim`. `text_encoder`: optional frozen encoder for
    expressions given as strings (precomputed hidden states need none).
    """

    def __init__(
        self,
        sam2_model: nn.Module,
        fuser: AuralFuser,
        audio_encoder: AudioEncoder | None,
        text_encoder: TextEncoder | None = None,
        official_query_pe: bool = True,
    ) -> None:
        super().__init__()
        cfg = fuser.config
        if cfg.dim != sam2_model.hidden_dim:
            raise ValueError(f"fuser dim {cfg.dim} must equal the SAM2 hidden dim {sam2_model.hidden_dim}")
        if cfg.uses_audio:
            if audio_encoder is None:
                raise ValueError(f"fuser modalities={cfg.modalities!r} needs an audio encoder")
            if audio_encoder.output_dim != cfg.audio_dim:
                raise ValueError(
                    f"audio encoder gives {audio_encoder.output_dim}-d embeddings, the fuser expects "
                    f"audio_dim={cfg.audio_dim}"
                )
        if text_encoder is not None and cfg.uses_text and text_encoder.hidden_size != cfg.text_dim:
            raise ValueError(f"text encoder hidden {text_encoder.hidden_size} != fuser text_dim {cfg.text_dim}")
        self.sam2 = freeze_sam2(sam2_model)
        self.fuser = fuser
        self.audio_encoder = audio_encoder
        self.text_encoder = text_encoder
        self.official_query_pe = official_query_pe

    @property
    def _detach_mask(self) -> bool:
        return self.fuser.config.mask_prompt_text == "joint"

    @property
    def _binary_mask(self) -> bool:
        return self.fuser.config.mask_prompt_binary

    @property
    def image_size(self) -> int:
        return int(self.sam2.image_size)

    def train(self, mode: bool = True) -> AuralSAM2:
        """Train the fuser (and VGGish); SAM2 and the text encoder stay in eval (released regime)."""
        super().train(mode)
        nn.Module.train(self.sam2, False)
        if self.text_encoder is not None:
            self.text_encoder.train(False)
        return self

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Named parameters the optimiser should get: the fuser's and, if trainable, VGGish's."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    # ----------------------------------------------------------------------------------------

    def pyramid_of(self, visual: Tensor | Pyramid | CompactPyramid | Sequence[Tensor]) -> Pyramid:
        """Frames `(N, 3, S, S)` (preprocessed) are encoded; cached pyramids are used as given."""
        if isinstance(visual, CompactPyramid):
            return expand_compact(self.sam2, visual)
        if isinstance(visual, Tensor):
            return encode_frames(self.sam2, visual)
        if len(visual) != 3:
            raise ValueError(f"a pyramid has 3 levels (s4, s8, s16), got {len(visual)}")
        device = self.sam2.device
        return Pyramid(*(x.to(device) for x in visual))

    def audio_embeddings(self, audio: Tensor | None) -> Tensor | None:
        """Log-mel examples `(N, Ch, 96, 64)` -> `(N, audio_dim)`; 2-D input is taken as embeddings.

        A fuser that does not listen (the `visual` / `text` ablations) gets None whatever is given,
        so one data pipeline serves every ablation row.
        """
        if audio is None or not self.fuser.config.uses_audio:
            return None
        if audio.ndim == 2:
            return audio.to(self.sam2.device)
        if self.audio_encoder is None:
            raise ValueError("log-mel examples given but the model has no audio encoder")
        return self.audio_encoder(audio.to(self.sam2.device))

    def text_hidden(self, text: Tensor | TextEmbeddings | str | Sequence[str] | None) -> Tensor | None:
        """One expression (string) or its hidden states `(L, H)`/`(1, L, H)` -> `(L, H)`."""
        if text is None:
            return None
        device = self.sam2.device
        if isinstance(text, TextEmbeddings):
            return text.hidden.to(device)
        if isinstance(text, Tensor):
            return text.to(device)
        if self.text_encoder is None:
            raise ValueError("an expression string was given but the model has no text encoder")
        expressions = [text] if isinstance(text, str) else list(text)
        if len(expressions) != 1:
            raise ValueError(f"one expression per clip forward (released), got {len(expressions)}")
        return self.text_encoder(expressions).hidden.to(device)

    def forward_clip(
        self,
        visual: Tensor | Pyramid | CompactPyramid | Sequence[Tensor],
        audio: Tensor | None,
        text: Tensor | TextEmbeddings | str | Sequence[str] | None = None,
        cond_frame: int | None = None,
        point_inputs: PointInputs | None = None,
        mask_inputs: Tensor | None = None,
        cond_mask: Tensor | None = None,
        use_fuser: bool = True,
    ) -> ClipOutput:
        """Run one clip. `visual`: frames or a (cached) pyramid; `audio`: log-mel examples or
        embeddings; `text`: expression or its hidden states. `cond_frame` defaults to the released
        rule: N // 2 in training, 0 in eval (AVSBench; Ref-AVS uses N // 2 always: pass it).
        `point_inputs`/`mask_inputs` prompt the conditioning frame (SAM2 format); `cond_mask`
        (1, 1, S, S) binary is the conditioning frame's output (stock SAM2 `add_new_mask`); a fuser with
        `mask_prompt` prompts every other frame with its mask. `use_fuser=False`: plain SAM2, no
        audio or text prompts (the paper's Table 6 "SAM2" rows)."""
        pyramid = self.pyramid_of(visual)
        n = pyramid.s16.shape[0]
        if cond_frame is None:
            cond_frame = n // 2 if self.training else 0
        if not use_fuser:
            frames = track_clip(self.sam2, pyramid, None, cond_frame, point_inputs, mask_inputs=mask_inputs,
                                cond_mask=cond_mask, official_query_pe=self.official_query_pe)
            return ClipOutput(frames, None, cond_frame)
        fused = self._fuse(pyramid, audio, text)
        prompts, frame_masks = _decoder_prompts(fused, self._detach_mask, self._binary_mask)
        frames = track_clip(
            self.sam2,
            pyramid,
            prompts,
            cond_frame,
            point_inputs,
            mask_inputs=mask_inputs,
            frame_mask_inputs=frame_masks,
            cond_mask=cond_mask,
            official_query_pe=self.official_query_pe,
        )
        return ClipOutput(frames, fused, cond_frame)

    forward = forward_clip

    def _fuse(self, pyramid: Pyramid, audio: Tensor | None,
              text: Tensor | TextEmbeddings | str | Sequence[str] | None) -> FuserOutput:
        dtype = next(self.fuser.parameters()).dtype
        return self.fuser([x.to(dtype) for x in pyramid], self.audio_embeddings(audio), self.text_hidden(text))

    def forward_clips(
        self,
        clips: Sequence[tuple[Tensor | Pyramid | CompactPyramid | Sequence[Tensor], Tensor | None,
                              Tensor | TextEmbeddings | str | Sequence[str] | None]],
        cond_frames: Sequence[int],
    ) -> list[ClipOutput]:
        """Several clips, each `(visual, audio, text)` with its conditioning frame: the fuser runs per
        clip (its attention and fusion see that clip's frames and tokens only), then clips of one
        length and conditioning frame are tracked together (`track_clips`: frame t of each is one
        decoder batch, each with its own memory). Equal to `forward_clip` one at a time, up to float
        summation order; returned in the input order."""
        if len(clips) != len(cond_frames):
            raise ValueError(f"{len(clips)} clips but {len(cond_frames)} conditioning frames")
        pyramids = [self.pyramid_of(visual) for visual, _, _ in clips]
        fused = [self._fuse(pyramid, audio, text) for pyramid, (_, audio, text) in zip(pyramids, clips, strict=True)]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (pyramid, cond) in enumerate(zip(pyramids, cond_frames, strict=True)):
            groups.setdefault((pyramid.s16.shape[0], cond), []).append(i)  # length buckets
        outputs: list[ClipOutput | None] = [None] * len(clips)
        for (_, cond), members in groups.items():
            prompts, masks = zip(*(_decoder_prompts(fused[i], self._detach_mask, self._binary_mask)
                                   for i in members), strict=True)
            tracked = track_clips(self.sam2, [pyramids[i] for i in members], prompts, cond,
                                  frame_mask_inputs=masks, official_query_pe=self.official_query_pe)
            for i, frames in zip(members, tracked, strict=True):
                outputs[i] = ClipOutput(frames, fused[i], cond)
        return outputs  # type: ignore[return-value]

    @torch.no_grad()
    def predict_clip(
        self,
        visual: Tensor | Pyramid | CompactPyramid | Sequence[Tensor],
        audio: Tensor | None,
        text: Tensor | TextEmbeddings | str | Sequence[str] | None = None,
        cond_frame: int = 0,
        mode: DecodeMode = "iou_select",
        clicks: tuple[Tensor, Tensor] | None = None,
        box: Tensor | None = None,
        orig_hw: tuple[int, int] | None = None,
        point_inputs: PointInputs | None = None,
    ) -> ClipPrediction:
        """Inference on one clip in eval mode (restores the previous mode afterwards).

        Optional SAM2 prompts on the conditioning frame: `clicks = (points (P, 2) (x, y),
        labels (P,) 1/0)` and/or `box (4,) (x0, y0, x1, y1)` in original-frame pixels of size
        `orig_hw = (H, W)` (default: model-input pixels), or ready `point_inputs`.
        """
        if clicks is not None or box is not None:
            if point_inputs is not None:
                raise ValueError("give clicks/box or point_inputs, not both")
            hw = orig_hw or (self.image_size, self.image_size)
            points, labels = clicks if clicks is not None else (None, None)
            point_inputs = point_inputs_from_clicks(self.image_size, hw, points, labels, box)
        if point_inputs is not None:
            device = self.sam2.device
            point_inputs = PointInputs(
                point_coords=point_inputs["point_coords"].to(device),
                point_labels=point_inputs["point_labels"].to(device),
            )
        was_training = self.training
        self.train(False)
        try:
            out = self.forward_clip(visual, audio, text, cond_frame=cond_frame, point_inputs=point_inputs)
        finally:
            self.train(was_training)
        return ClipPrediction(decode_masks(out.frames, mode), out.ious, out.object_score_logits, mode)
