"""Ref-AVS text embeddings: one Arrow file per dataset, expression uid -> frozen encoder output.

The released model feeds the fuser the frozen text encoder's `last_hidden_state` (25 x hidden,
padding positions included) for each expression; it never trains the encoder, so the output is
cached once. Rows are sorted by uid, in record batches of `ROWS_PER_BATCH`, stored in the cache's
16-bit dtype (bf16 words in uint16, as the pyramids), with the attention mask. The file's
fingerprint is the text model's (`text_fingerprint`: its files, weights, tokenizer and call), not
the SAM2 one, so changing the encoder rebuilds this file only; its source records a hash of the
expression list, so a changed list rebuilds it too.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from auralsam2.utils.hashing import state_sha256
from feature_cache.files import ArrowFileWriter, verify_file
from feature_cache.schema import FORMAT_VERSION, canonical_json, file_metadata, tensor_column, text_schema

ROWS_PER_BATCH = 256
ENCODE_BATCH = 32


@dataclass(frozen=True)
class ExpressionText:
    uid: str
    clip: str
    text: str


@dataclass
class TextResult:
    path: str
    rows: int
    skipped: bool
    fingerprint: dict[str, Any]


def load_text_encoder(name: str, device: str | torch.device = "cpu"):
    """`auralsam2.text.TextEncoder` from a local folder or a model id in the local HF cache."""
    from auralsam2.text import TextEncoder

    return TextEncoder.from_pretrained(name, device=str(device))


def text_fingerprint(name: str, encoder, dtype: str) -> dict[str, Any]:
    """What determines a cached expression embedding: the encoder's files (`text_encoder_identity`),
    its weights as loaded, the whole tokenizer (vocabulary, merges, normalisation) and the released
    tokenizer call, the output taken and the storage dtype."""
    from auralsam2.text import TOKENIZER_SETTINGS, text_encoder_identity

    backend = getattr(encoder.tokenizer, "backend_tokenizer", None)
    tokenizer = backend.to_str() if backend is not None else canonical_json(sorted(encoder.tokenizer.get_vocab().items()))
    return {
        "format": FORMAT_VERSION,
        "text_encoder": name,
        "files_sha256": text_encoder_identity(name),
        "weights_sha256": state_sha256(encoder.model.state_dict()),
        "tokenizer_sha256": hashlib.sha256(tokenizer.encode()).hexdigest(),
        "tokenizer_settings": {**TOKENIZER_SETTINGS, "max_length": int(encoder.max_length)},
        "hidden_size": int(encoder.hidden_size),
        "output": "last_hidden_state",
        "dtype": dtype,
    }


def expressions_source(expressions: list[ExpressionText]) -> dict[str, Any]:
    digest = hashlib.sha256(canonical_json([[e.uid, e.clip, e.text] for e in expressions]).encode())
    return {"expressions": len(expressions), "sha256": digest.hexdigest()}


def text_file_path(out: Path, dataset: str) -> Path:
    return Path(out) / "text" / f"{dataset}.arrow"


def build_text_file(path: str | os.PathLike, expressions: list[ExpressionText], text_encoder: str, dtype: str,
                    created: str, *, compression: str = "none", device: str | torch.device = "cpu",
                    recheck: bool = True) -> TextResult:
    """Encode every expression (sorted by uid) and write the text file; skip when it already verifies."""
    path = Path(path)
    expressions = sorted(set(expressions), key=lambda e: (e.uid, e.clip))
    uids = [e.uid for e in expressions]
    if len(set(uids)) != len(uids):
        dup = sorted({u for u in uids if uids.count(u) > 1})[:5]
        raise ValueError(f"expression uids are not unique across the dataset: {dup}; check the ingest")
    encoder = load_text_encoder(text_encoder, device)
    fingerprint = text_fingerprint(text_encoder, encoder, dtype)
    source = expressions_source(expressions)
    if path.is_file():
        problems, _ = verify_file(path, kind="text", fingerprint=fingerprint, source=source, checksums=recheck)
        if not problems:
            return TextResult(str(path), len(expressions), True, fingerprint)
    rows = (len(expressions) + ROWS_PER_BATCH - 1) // ROWS_PER_BATCH
    schema = text_schema(dtype, encoder.max_length, encoder.hidden_size)
    meta = file_metadata("text", fingerprint, created, rows, source)
    with ArrowFileWriter(path, schema, meta, rows, compression) as writer:
        for start in range(0, len(expressions), ROWS_PER_BATCH):
            chunk = expressions[start:start + ROWS_PER_BATCH]
            hidden, masks = [], []
            for i in range(0, len(chunk), ENCODE_BATCH):
                out = encoder([e.text for e in chunk[i:i + ENCODE_BATCH]])
                hidden.append(out.hidden.cpu())
                masks.append(out.attention_mask.cpu())
            m = torch.cat(masks).to(torch.uint8).numpy()
            writer.write(pa.record_batch([
                pa.array([e.uid for e in chunk], pa.string()),
                pa.array([e.clip for e in chunk], pa.string()),
                pa.array([e.text for e in chunk], pa.string()),
                tensor_column(torch.cat(hidden), dtype),
                pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(m)),
            ], schema=schema))
        writer.close()
    return TextResult(str(path), len(expressions), False, fingerprint)
