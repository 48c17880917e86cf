"""The synthetic demo's text encoder: a small random RoBERTa with a byte-level BPE tokenizer trained
on the synthetic world's expressions, written as a Hugging Face folder (`save_pretrained`), so it
loads through exactly the code the released `distilbert/distilroberta-base` takes. Frozen, as
released; only the fuser's `text_proj` learns to read it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from auralsam2.text import tiny_text_encoder

__all__ = ["write_tiny_text_encoder"]


def write_tiny_text_encoder(out: str | os.PathLike, corpus: Sequence[str], *, hidden_size: int = 32,
                            layers: int = 2, heads: int = 2, vocab_size: int = 400, seed: int = 0) -> Path:
    """Build the encoder and write its folder (config, weights, tokenizer), atomically: the files go
    to a temporary folder that is renamed when complete."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    out = Path(out)
    encoder = tiny_text_encoder(hidden_size=hidden_size, layers=layers, heads=heads, vocab_size=vocab_size,
                                corpus=corpus, seed=seed)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    encoder.model.save_pretrained(tmp)
    encoder.tokenizer.save_pretrained(tmp)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out
