"""Text encoder: released tokenisation (25 tokens, padded), frozen, offline loading from a directory."""

from __future__ import annotations

import pytest
import torch

from auralsam2.text import TextEncoder, tiny_text_encoder


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return tiny_text_encoder(hidden_size=32, layers=2, heads=2)


def test_shapes_mask_and_padding(encoder):
    out = encoder(["the dog barking on the left", "the piano"])
    assert out.hidden.shape == (2, 25, 32) and out.hidden.dtype == torch.float32
    assert out.attention_mask.shape == (2, 25)
    ids = encoder.tokenizer(["the piano"])["input_ids"][0]
    assert int(out.attention_mask[1].sum()) == len(ids)  # <s> ... </s>, then padding
    assert ids[0] == encoder.tokenizer.bos_token_id and ids[-1] == encoder.tokenizer.eos_token_id
    assert out.attention_mask[1, len(ids) :].sum() == 0
    assert encoder.hidden_size == 32


def test_long_expressions_are_truncated_to_25(encoder):
    out = encoder(["the dog " * 40])
    assert out.hidden.shape == (1, 25, 32) and int(out.attention_mask.sum()) == 25


def test_batched_equals_one_by_one_and_is_deterministic(encoder):
    texts = ["the man playing the guitar", "a woman singing into a microphone"]
    both = encoder(texts).hidden
    for i, t in enumerate(texts):
        assert torch.allclose(encoder([t]).hidden[0], both[i], atol=1e-5)
    assert torch.equal(encoder(texts).hidden, both)


def test_frozen_and_stays_in_eval(encoder):
    encoder.train()
    assert not encoder.model.training
    assert not any(p.requires_grad for p in encoder.parameters())
    out = encoder(["the bird chirping"])
    assert not out.hidden.requires_grad


def test_round_trip_through_a_local_directory(encoder, tmp_path):
    encoder.tokenizer.save_pretrained(tmp_path)
    encoder.model.save_pretrained(tmp_path)
    loaded = TextEncoder.from_pretrained(tmp_path)
    texts = ["the car engine making noise"]
    assert torch.allclose(loaded(texts).hidden, encoder(texts).hidden, atol=1e-6)


def test_missing_weights_name_the_directory_to_provide(tmp_path):
    with pytest.raises(FileNotFoundError, match="distilroberta-base.*save_pretrained"):
        TextEncoder.from_pretrained(tmp_path / "no-such-model")


def test_free_english_tokenizes_with_the_released_settings(encoder, tmp_path):
    """Casing, punctuation, digits, non-ASCII and long expressions go through the saved folder's
    tokenizer with the released call (max_length 25, padded, truncated); byte-level BPE has no
    unknown token, so every character survives tokenisation."""
    from auralsam2.text import TOKENIZER_SETTINGS, text_encoder_identity

    encoder.tokenizer.save_pretrained(tmp_path)
    encoder.model.save_pretrained(tmp_path)
    loaded = TextEncoder.from_pretrained(tmp_path)
    tok = loaded.tokenizer
    texts = ["The DOG, barking loudly!", "object nº 3 at 10:30 — left side", "café naïve Ünïcode 東京",
             "the man who is playing the acoustic guitar on the far left while a woman sings and a dog "
             "barks behind him near the red car"]
    out = loaded(texts)
    assert out.hidden.shape == (4, 25, 32) and out.attention_mask.shape == (4, 25)
    for text, mask in zip(texts[:3], out.attention_mask[:3], strict=True):
        ids = tok(text)["input_ids"]
        assert int(mask.sum()) == min(len(ids), 25)  # truncated at 25, as released
        assert tok.decode(ids, skip_special_tokens=True) == text  # byte-level: every character survives
        assert tok.unk_token_id not in ids
    assert len(tok(texts[3])["input_ids"]) > 25 and int(out.attention_mask[3].sum()) == 25
    assert TOKENIZER_SETTINGS == {"max_length": 25, "padding": "max_length", "truncation": True}
    assert set(text_encoder_identity(tmp_path)) >= {"config.json", "model.safetensors", "tokenizer.json"}
