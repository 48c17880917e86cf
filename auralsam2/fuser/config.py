"""`FuserConfig`: the AuralFuser's architecture, ablation and size knobs (one field per knob).

`FuserConfig()` is the released AVSBench architecture, `FuserConfig(variant="refavs")` the released
Ref-AVS one. Fields whose default depends on another field are `None` = derived (`modalities`,
`fusion_dim`, `proj_dim`, `sparse_prompts`); the derived value is filled in when the config is
validated, so the resolved config (what a run records) names it. A setting that contradicts
another is an error naming both fields, never a silent change.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["FuserConfig", "Modalities"]

Modalities = Literal["audio", "text", "audio+text", "visual"]


class FuserConfig(BaseModel):
    """AuralFuser architecture. Defaults = the released AVSBench fuser (loads released weights).

    Sizes: `dim` must equal the SAM2 hidden size (256 for real configs, 32 for the `tiny` test
    config). Ablations (paper Tables 3-5): `levels`, `sparse_prompts`, `dense_prompts`,
    `modalities`, `fusion`, `audiocon`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # inf/nan: a typo, never a setting

    variant: Literal["avs", "refavs"] = Field(
        "avs", description="released layout: 'avs' (AVSBench v1s/v1m/v2) or 'refavs' (Ref-AVS heads + text)"
    )
    dim: int = Field(256, description="token/channel width; must equal the SAM2 hidden dim (256; tiny 32)")
    audio_dim: int = Field(
        256, description="audio encoder output size (channels x VGGish embedding); != dim adds `audio_proj`"
    )
    text_dim: int = Field(768, description="text encoder hidden size (768 distilroberta/roberta-base)")
    text_hidden: int = Field(1024, description="hidden width of `text_proj` (text_dim -> hidden -> dim)")
    f_depths: tuple[int, int, int] = Field((3, 6, 12), description="visual PVT-v2 blocks per level (s4, s8, s16)")
    a_depth: int = Field(3, description="1-D token blocks per level")
    heads: int = Field(4, description="attention heads in visual and token blocks")
    mlp_hidden: int = Field(1024, description="hidden width of every block MLP (mlp_ratio 4 at dim 256)")
    sr_ratio: int = Field(4, description="spatial-reduction kernel=stride of the visual attention keys")
    dropout: float = Field(0.1, description="dropout on attention probabilities and block outputs")
    fusion_dim: int | None = Field(None, description="fusion module inner width; None = dim // 2 (128)")
    fusion: Literal["official", "paper"] = Field(
        "official", description="fusion semantics: released raw-reshape/no-softmax, or per-channel softmax"
    )
    audiocon: Literal["official", "paper"] = Field(
        "official",
        description="projection heads for AudioCon: released 128-d heads, or the paper's 3-layer MLPs to 64-d",
    )
    proj_dim: int | None = Field(None, description="projection output size; None = 128 (official) / 64 (paper)")
    levels: Literal[1, 2, 3] = Field(
        3,
        description="how many pyramid levels make prompts, deepest first: 1 = s16 only (decoder stage 1), "
        "2 = s16+s8 (stages 1-2), 3 = all (the paper's Table 3 levels 1, 2, 3)",
    )
    sparse_prompts: bool | None = Field(
        None, description="emit per-frame sparse prompts (added to the mask tokens); None = on, except for "
        "modalities 'visual' (no tokens to make them from)")
    dense_prompts: bool = Field(True, description="emit dense prompts (added to the image tokens)")
    mask_prompt: bool = Field(
        False,
        description="ours, off in the released model: also prompt SAM2, on every frame, with a mask: where "
        "the frame's sound (and, with text, the expression) points, from per-cell similarities "
        "(auralsam2.fuser.mask_prompt); needs audio or text",
    )
    mask_prompt_temperature: float = Field(
        0.05, gt=0, description="mask prompt = sigmoid((cosine - threshold) / temperature)"
    )
    mask_prompt_levels: Literal["finest", "all"] = Field(
        "all", description="the map's visual input: the finest used level's patch embedding, or the sum of "
        "every used level's (all on the same G x G grid, before position encoding)"
    )
    mask_prompt_peak_ratio: float = Field(
        0.80, ge=0, le=1, description="a cell is on only where its cosine also reaches this share of the "
        "frame's highest cosine (a per-frame threshold; 0 = the learnt global threshold alone; 0.80 picked on val)"
    )
    mask_prompt_text: Literal["min", "relative", "joint"] = Field(
        "min", description="how the text map joins the audio map (auralsam2.fuser.mask_prompt): 'min' = on "
        "where both are on, text heads on the fuser's embeddings; 'relative' = a text branch of its own, "
        "trained by loss.text_contrast, shifting the audio margin by gate x (text cosine - frame's best); "
        "'joint' = the text branch's and the audio heads' cosines, each times a learnt scale, plus a learnt "
        "bias, trained together by the mask loss (a cell is on where the evidence of both adds up)"
    )
    mask_prompt_text_visual: Literal["appearance", "position", "both"] = Field(
        "appearance", description="'relative'/'joint': what the text branch reads of each cell: its own patch "
        "embeddings of the pyramid ('appearance': colour, shape), the grid's 2-D position encoding "
        "('position': 'on the left'), or their sum"
    )
    mask_prompt_audio_clip: bool = Field(
        False, description="'joint': a third term, each cell's best audio cosine over ALL of the clip's frames "
        "(its own learnt scale): the referred object is on where it sounds in any second of the clip, also the "
        "seconds it is silent (the Ref-AVS GT masks it on every frame); nothing without audio"
    )
    mask_prompt_binary: bool = Field(
        False, description="SAM2 reads the mask prompt decided, 1 where its logit > 0 and 0 elsewhere, instead "
        "of as probabilities (then no segmentation gradient reaches the map; `joint` detaches it anyway). "
        "A cell near 0.5 is a half-hearted prompt that SAM2 answers with a faint mask (BENCHMARKS.md)"
    )
    mask_prompt_text_gate: float = Field(
        30.0, ge=0, description="'relative': the learnt gate's starting value (how far a cell that fits the "
        "words 1.0 worse in cosine than the frame's best is pushed below the audio margin)"
    )
    modalities: Modalities | None = Field(
        None,
        description="tokens entering the fuser: 'audio', 'text', 'audio+text', or 'visual' (no tokens, no "
        "fusion, no sparse prompts); None = 'audio' (avs) / 'audio+text' (refavs)",
    )

    @model_validator(mode="before")
    @classmethod
    def _derive_defaults(cls, data: Any) -> Any:
        """Fill the derived defaults (None fields) from the fields they depend on."""
        if not isinstance(data, dict):
            return data
        data = dict(data)

        def given(name: str) -> Any:
            value = data.get(name)
            return cls.model_fields[name].default if value is None else value

        if data.get("modalities") is None:
            data["modalities"] = "audio+text" if given("variant") == "refavs" else "audio"
        if data.get("fusion_dim") is None and isinstance(given("dim"), int):
            data["fusion_dim"] = given("dim") // 2
        if data.get("proj_dim") is None:
            data["proj_dim"] = 128 if given("audiocon") == "official" else 64
        if data.get("sparse_prompts") is None:
            data["sparse_prompts"] = data["modalities"] != "visual"
        return data

    @model_validator(mode="after")
    def _consistent(self) -> FuserConfig:
        if self.dim % self.heads or self.dim % 2:
            raise ValueError(f"dim {self.dim} must be even and divisible by heads {self.heads}")
        if self.modalities == "visual" and self.sparse_prompts:
            raise ValueError("sparse_prompts=true with modalities='visual': a visual-only fuser has no tokens to "
                             "make sparse prompts from; set sparse_prompts: false (or leave it unset)")
        if self.mask_prompt and self.modalities == "visual":
            raise ValueError("mask_prompt=true with modalities='visual': the mask prompt marks what the audio "
                             "and/or the text point at, and a visual-only fuser has neither; set mask_prompt: false")
        if self.mask_prompt_text_visual != "appearance" and self.mask_prompt_text == "min":
            raise ValueError(f"mask_prompt_text_visual={self.mask_prompt_text_visual!r} needs the text branch of "
                             "mask_prompt_text 'relative' or 'joint' ('min' reads the fuser's own embeddings)")
        if self.mask_prompt and self.mask_prompt_audio_clip and self.mask_prompt_text != "joint":
            raise ValueError("mask_prompt_audio_clip=true is a term of the joint mask prompt: it needs "
                             f"mask_prompt_text 'joint', not {self.mask_prompt_text!r}")
        if not (self.sparse_prompts or self.dense_prompts or self.mask_prompt):
            raise ValueError("at least one of sparse_prompts / dense_prompts / mask_prompt must be on")
        return self

    @property
    def uses_audio(self) -> bool:
        return self.modalities in ("audio", "audio+text")

    @property
    def uses_text(self) -> bool:
        return self.modalities in ("text", "audio+text")

    @property
    def used_levels(self) -> tuple[int, ...]:
        """Pyramid indices computed, in processing order (fine to coarse): the `levels` deepest."""
        return tuple(range(3 - self.levels, 3))

    @classmethod
    def tiny(cls, **overrides: Any) -> FuserConfig:
        """A CPU-test-sized fuser for the tiny SAM2 config (hidden 32)."""
        base: dict[str, Any] = dict(dim=32, audio_dim=32, text_dim=32, text_hidden=64, f_depths=(1, 1, 1),
                                    a_depth=1, heads=2, mlp_hidden=64, fusion_dim=16)
        base.update(overrides)
        return cls(**base)
