"""The synthetic demo's text encoder: a small RoBERTa with a byte-level BPE tokenizer trained on the
synthetic world's expressions, written as a Hugging Face folder (`save_pretrained`), so it loads
through exactly the code the released `distilbert/distilroberta-base` takes. Frozen, as released.

Like distilroberta-base it is pretrained as a masked language model before it is frozen
(`auralsam2 make-tiny-text-encoder --pretrain-steps`, 0 = random weights): a few seconds on the expression corpus. The stand-in
matters: the released encoder's hidden states tell words apart, and a random 2-layer RoBERTa's do
so much less, which measurably held back the text map (BENCHMARKS.md)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from auralsam2.text import TextEncoder, tiny_text_encoder

__all__ = ["pretrain_masked_lm", "save_text_encoder", "write_tiny_text_encoder"]


def pretrain_masked_lm(encoder: TextEncoder, corpus: Sequence[str], steps: int, *, seed: int = 0, lr: float = 1e-3,
                       batch: int = 32, mask_share: float = 0.15) -> list[float]:
    """Masked-LM pretraining of `encoder.model` in place (then frozen again): each step, `batch`
    expressions of `corpus` with `mask_share` of their real tokens replaced by `<mask>`, and every
    real token predicted at its position (cross-entropy through the tied word embeddings and a small
    head that is thrown away). Returns the loss every 100 steps."""
    model, tokenizer = encoder.model, encoder.tokenizer
    ids = tokenizer(list(corpus), padding="max_length", truncation=True, max_length=encoder.max_length,
                    return_tensors="pt")
    tokens, attention = ids["input_ids"], ids["attention_mask"]
    special = torch.isin(tokens, torch.tensor(tokenizer.all_special_ids))
    g = torch.Generator().manual_seed(seed)
    width = model.config.hidden_size
    head = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width))
    model.requires_grad_(True).train()
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    losses = []
    for step in range(steps):
        pick = torch.randint(len(corpus), (batch,), generator=g)
        x, att, real = tokens[pick], attention[pick], ~special[pick]
        masked = real & (torch.rand(x.shape, generator=g) < mask_share)
        inputs = x.masked_fill(masked, tokenizer.mask_token_id)
        hidden = head(model(input_ids=inputs, attention_mask=att).last_hidden_state)
        logits = hidden @ model.embeddings.word_embeddings.weight.T
        loss = nn.functional.cross_entropy(logits[real], x[real])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 99 or step == steps - 1:
            losses.append(round(loss.item(), 4))
    model.requires_grad_(False).eval()
    return losses


def write_tiny_text_encoder(out: str | os.PathLike, corpus: Sequence[str], *, hidden_size: int = 32,
                            layers: int = 2, heads: int = 2, vocab_size: int = 400, seed: int = 0) -> Path:
    """Build a random (not pretrained: fast, for tests) encoder and write its folder
    (`save_text_encoder`); the demo's asset is also pretrained (`flows.pretrain.run_make_tiny_text_encoder`)."""
    encoder = tiny_text_encoder(hidden_size=hidden_size, layers=layers, heads=heads, vocab_size=vocab_size,
                                corpus=corpus, seed=seed)
    return save_text_encoder(encoder, out)


def save_text_encoder(encoder: TextEncoder, out: str | os.PathLike) -> Path:
    """Write the encoder's folder (config, weights, tokenizer) atomically: the files go to a temporary
    folder that is renamed when complete."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    out = Path(out)
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
