"""Content hashes: of bytes, of files, and of state dicts (names, dtypes, shapes and raw bytes)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["canonical_json", "payload_sha256", "sha256_bytes", "sha256_file", "state_sha256"]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def state_sha256(state: Mapping[str, Any]) -> str:
    """Hex sha256 over a state dict's tensors in sorted key order: `name|dtype|shape|` then the raw bytes."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def canonical_json(value: Any) -> bytes:
    """The one byte form of a JSON value that checksums are taken over (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True).encode()


def payload_sha256(obj: Any) -> str:
    """Hex sha256 of a nested checkpoint payload (dicts, lists, tensors, plain values), each value
    tagged with its type so that `1`, `1.0`, `"1"` and `True` differ; dict keys in sorted order."""
    import torch

    digest = hashlib.sha256()

    def visit(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().to("cpu").contiguous()
            digest.update(f"T{t.dtype}|{tuple(t.shape)}|".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, Mapping):
            digest.update(f"D{len(x)}|".encode())
            for key in sorted(x, key=lambda k: (type(k).__name__, str(k))):
                digest.update(f"K{type(key).__name__}:{key!s}|".encode())
                visit(x[key])
        elif isinstance(x, list | tuple):
            digest.update(f"L{type(x).__name__}{len(x)}|".encode())
            for item in x:
                visit(item)
        else:
            digest.update(f"V{type(x).__name__}:{x!r}|".encode())

    visit(obj)
    return digest.hexdigest()
