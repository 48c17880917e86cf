"""The records every dataset reader produces: `Clip`, `Expression` and `Finding`.

A Clip is one video clip (the unit of sharding and caching). Paths inside a Clip are relative to
the dataset root it was read from (`Clip.root`), so a record stays valid when the tree moves and
says exactly which file of the release it came from.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Severity = Literal["error", "warning"]

DATASETS = ("avss", "avsbench-s4", "avsbench-ms3", "refavs")

# Finding kinds, one per problem the readers can detect. `error` quarantines the clip (or, for a
# Ref-AVS expression, that expression); `warning` keeps it and records what was done about it.
FINDING_KINDS = {
    "missing_folder": "a clip or expression folder named by the metadata does not exist",
    "missing_file": "a frame, mask or audio file is missing",
    "unreadable_file": "a file exists but cannot be decoded (truncated or corrupt)",
    "wrong_frame_count": "the number of frames differs from the subset's frame count",
    "mask_size_mismatch": "a mask's size differs from its frame's size",
    "short_audio": "the audio yields fewer 0.96 s examples than there are frames",
    "mono_audio": "mono audio where stereo is expected (the channel is duplicated)",
    "unknown_split": "a split value the dataset does not define",
    "unknown_label": "a subset label or category the dataset does not define",
    "duplicate_uid": "the same clip id appears twice in the metadata",
    "unmatched_palette_colour": "mask pixels whose colour is not in the 71-class palette",
    "skipped_row": "a metadata row the dataset marks as not part of any split (Ref-AVS TODO rows)",
    "malformed_row": "a metadata row with missing or unparsable fields",
    "mixed_split": "a Ref-AVS media folder whose expressions belong to several splits",
    "unsupported_audio": "audio the model cannot hear as it is (more than two channels)",
    "unknown_class_id": "a semantic label map with class ids outside the dataset's classes",
    "unsafe_path": "a uid that is a path ('..', '/') or cannot be a file name (too long, a NUL byte), or a clip "
                   "folder or file that leads outside the raw tree (a symlink; `ingest --follow-symlinks` reads it)",
    "resampled_audio": "audio at another rate than VGGish's 16 kHz (resampled for the log-mel features)",
    "extra_file": "files in a clip's folders that are not part of the clip (not ingested)",
}


@dataclass(frozen=True)
class Finding:
    """One problem found while reading a dataset: which dataset, clip, file, what, how bad."""

    dataset: str
    clip_key: str
    file: str
    kind: str
    severity: Severity
    message: str
    # For a Ref-AVS expression-level problem: the expression it concerns. An `error` finding with an
    # expression uid quarantines that expression only (the clip goes when none of its expressions stay).
    expression_uid: str = ""

    def __post_init__(self) -> None:
        if self.kind not in FINDING_KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}; known: {sorted(FINDING_KINDS)}")

    def __str__(self) -> str:
        where = f" ({self.file})" if self.file else ""
        return f"[{self.severity}] {self.dataset}/{self.clip_key}{where}: {self.kind}: {self.message}"


@dataclass
class Expression:
    """A Ref-AVS referring expression: evaluated on its own, against its object's masks.

    `mask_paths[t]` is the referred object's mask for frame t (`gt_mask/<folder>/fid_<fid>/0000t.png`)
    or None when the release has no file for it (allowed for null expressions, whose ground truth is
    empty by definition).
    """

    uid: str
    text: str
    target_id: int
    is_null: bool
    split: str
    category: str = ""
    mask_paths: list[str | None] = field(default_factory=list)


@dataclass
class Clip:
    """One clip of one dataset, with every file it needs, relative to `root`.

    `mask_paths[t]` is None for frames without ground truth (AVSBench v1s/S4 train: frames 1..4).
    For AVSS, `mask_paths` are the RGB palette masks (`labels_rgb`) and `semantic_paths` the class-id
    masks (`labels_semantic`); binary ground truth is `mask > 0` everywhere.
    """

    key: str
    dataset: str
    subset: str
    split: str
    uid: str
    root: str
    frame_paths: list[str]
    mask_paths: list[str | None]
    audio_path: str | None
    category: str = ""
    semantic_paths: list[str | None] = field(default_factory=list)
    expressions: list[Expression] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return len(self.frame_paths)

    @property
    def labelled_frames(self) -> list[int]:
        """Frame indices with a ground-truth mask (for Ref-AVS: frames any expression has a mask for)."""
        if self.expressions:
            return [t for t in range(self.n_frames) if any(e.mask_paths[t] for e in self.expressions)]
        return [t for t, p in enumerate(self.mask_paths) if p]

    def path(self, relative: str) -> Path:
        return Path(self.root) / relative

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Clip:
        record = dict(record)
        record["expressions"] = [Expression(**e) for e in record.get("expressions", [])]
        return cls(**record)


_KEY_SAFE = re.compile(r"[^A-Za-z0-9_\-+=,@~]")


def make_key(*parts: str) -> str:
    """A WebDataset-safe sample key from the dataset's own ids.

    WebDataset splits a tar member name at its first dot (key vs extension), and '/' would make a
    directory, so every character outside a conservative set is percent-encoded. The dataset's own
    uid stays readable inside the key (AVSBench and Ref-AVS ids use letters, digits, '-' and '_').
    """
    escaped = [_KEY_SAFE.sub(lambda m: f"%{ord(m.group()):02X}", p) for p in parts]
    return "-".join(escaped)
