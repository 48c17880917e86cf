"""Text path (Ref-AVS): a frozen transformers encoder for referring expressions.

Released behaviour (ref-avs.code/model/mymodel.py): `distilbert/distilroberta-base` (a 6-layer
RoBERTa, hidden 768), tokenised with `max_length=25, padding="max_length", truncation=True`, run
under `no_grad` in eval mode; the fuser receives `last_hidden_state` `(25, 768)` per expression,
padding positions included and unmasked. We return the attention mask too, so that callers can
choose, but the released fuser ignores it.

Weights are never downloaded here: `locate_text_encoder` finds a local Hugging Face-format
directory, or a model id's snapshot in the local Hugging Face cache, and `TextEncoder.from_pretrained`
loads that folder (the same code for both); anything else is an error naming what to provide.
`text_encoder_identity` hashes the files the folder is loaded from (weights, config, tokenizer):
the text cache's fingerprint, cheap enough to check before any work. Unit tests may use
`tiny_text_encoder()`: a randomly initialised tiny RoBERTa with a real byte-level BPE tokenizer
trained in-process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

DEFAULT_TEXT_MODEL = "distilbert/distilroberta-base"
MAX_LENGTH = 25
# The released tokenizer call: `tokenizer(texts, max_length=25, padding="max_length", truncation=True)`.
TOKENIZER_SETTINGS = {"max_length": MAX_LENGTH, "padding": "max_length", "truncation": True}
# What `from_pretrained` reads from a folder; weights: the first of these that exists.
_CONFIG_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                 "special_tokens_map.json", "added_tokens.json")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

__all__ = ["DEFAULT_TEXT_MODEL", "MAX_LENGTH", "TOKENIZER_SETTINGS", "TextEmbeddings", "TextEncoder",
           "locate_text_encoder", "text_encoder_identity", "tiny_text_encoder"]


def locate_text_encoder(name_or_dir: str | Path) -> Path:
    """The local folder a text encoder loads from: `name_or_dir` itself when it is a directory (a
    `save_pretrained` folder), else the snapshot of that model id in the local Hugging Face cache
    (`$HF_HOME`); never the network. `FileNotFoundError` says how to provide it."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"text encoder {str(path)!r}: the folder has no config.json; give a folder "
                                    "written by `save_pretrained` (tokenizer and model)")
        return path.resolve()
    source = str(name_or_dir)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, local_files_only=True))
    except Exception as err:  # noqa: BLE001 (not an id, not cached, or no hub client: all mean "not here")
        raise FileNotFoundError(
            f"text encoder {source!r}: no such folder, and not in the local Hugging Face cache "
            f"({type(err).__name__}). Save '{DEFAULT_TEXT_MODEL}' on a machine with internet "
            "(`AutoTokenizer.from_pretrained(id).save_pretrained(DIR)` and the same for `AutoModel`), copy DIR "
            "here and set model.text_encoder: DIR (or put the model in this machine's HF cache)") from None


def text_encoder_identity(name_or_dir: str | Path) -> dict[str, str]:
    """sha256 of every file `from_pretrained` reads from the encoder's folder (config, tokenizer,
    weights), by file name: changes exactly when the loaded encoder or its tokenizer can change."""
    from auralsam2.utils.hashing import sha256_file

    folder = locate_text_encoder(name_or_dir)
    files = {name: folder / name for name in _CONFIG_FILES if (folder / name).is_file()}
    weights = next((folder / w for w in _WEIGHT_FILES if (folder / w).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"text encoder {str(folder)!r}: no weights file ({' or '.join(_WEIGHT_FILES)})")
    files[weights.name] = weights
    return {name: sha256_file(path) for name, path in sorted(files.items())}


class TextEmbeddings(NamedTuple):
    """`hidden (B, max_length, hidden_size)` float32 and `attention_mask (B, max_length)` int64."""

    hidden: Tensor
    attention_mask: Tensor


class TextEncoder(nn.Module):
    """Frozen text encoder: list of expressions -> `TextEmbeddings` (`(B, 25, H)` + mask).

    The encoder stays in eval mode and without gradients whatever `train()` is called with; its
    parameters are not trained (the released code never optimises them).
    """

    def __init__(self, model: nn.Module, tokenizer, max_length: int = MAX_LENGTH) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.model.requires_grad_(False)
        self.model.eval()

    @classmethod
    def from_pretrained(
        cls, name_or_dir: str | Path = DEFAULT_TEXT_MODEL, max_length: int = MAX_LENGTH, device: str = "cpu"
    ) -> TextEncoder:
        """Load tokenizer + encoder from `locate_text_encoder`'s folder (a local directory or the
        local HF cache), never the network; a `FileNotFoundError` names what to provide."""
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging

        logging.disable_progress_bar()
        folder = locate_text_encoder(name_or_dir)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(f"text encoder {str(name_or_dir)!r} ({folder}): cannot be loaded "
                                    f"({type(err).__name__}: {str(err).splitlines()[0]}); give a folder written by "
                                    "`save_pretrained` for both the tokenizer and the model") from None
        return cls(model.to(device), tokenizer, max_length)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> TextEncoder:
        """Keep the encoder in eval mode: it is frozen (dropout off), as released."""
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, expressions: Sequence[str]) -> TextEmbeddings:
        if isinstance(expressions, str):
            expressions = [expressions]
        device = next(self.model.parameters()).device
        settings = {**TOKENIZER_SETTINGS, "max_length": self.max_length}
        tokens = self.tokenizer(list(expressions), **settings, return_tensors="pt")
        ids = tokens["input_ids"].to(device)
        mask = tokens["attention_mask"].to(device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return TextEmbeddings(hidden.float(), mask)


_TINY_CORPUS = (
    "the dog barking on the left",
    "the man playing the guitar",
    "a woman singing into a microphone",
    "the car engine making noise",
    "the baby crying in the middle",
    "the object making the loudest sound",
    "the bird chirping on the right",
    "the piano being played",
)


def tiny_text_encoder(
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    vocab_size: int = 300,
    corpus: Sequence[str] = _TINY_CORPUS,
    seed: int = 0,
    max_length: int = MAX_LENGTH,
) -> TextEncoder:
    """A tiny random RoBERTa + a real byte-level BPE tokenizer trained on `corpus`, built offline.

    transformers 5 needs the vocabulary and merges as objects (`vocab=dict, merges=list`); the old
    `vocab_file=`/`merges_file=` keywords are silently ignored and give a 5-token vocabulary.
    """
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(corpus), vocab_size=vocab_size, min_frequency=1, special_tokens=specials)
    vocab = bpe.get_vocab()
    merges = _merges_of(bpe)
    tokenizer = RobertaTokenizer(vocab=vocab, merges=merges)
    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_length + 4,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return TextEncoder(RobertaModel(config, add_pooling_layer=False), tokenizer, max_length)


def _merges_of(bpe) -> list[tuple[str, str]]:
    """The merge list of a trained `tokenizers` BPE model, as `(left, right)` pairs in rank order."""
    import json

    model = json.loads(bpe._tokenizer.to_str())["model"]
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
