"""The pretraining recipes behind the committed demo assets (tiny SAM2, tiny VGGish): they write
loadable checkpoints in the official layouts with a recipe JSON, and the committed assets match
their recipes' sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from auralsam2.audio import VGGish, VGGishConfig
from auralsam2.backbone import build_sam2_model
from flows.pretrain import ASSET, VGGISH_ASSET, run_pretrain_tiny_sam2, run_pretrain_tiny_vggish


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_committed_assets_match_their_recipes():
    for asset in (ASSET, VGGISH_ASSET):
        record = json.loads(asset.with_suffix(".json").read_text())
        assert record["sha256"] == _sha(asset), f"{asset} differs from the sha256 its recipe recorded"
        assert record["command"].startswith("auralsam2 pretrain-tiny-")


def test_sam2_recipe_trains_saves_and_continues(tmp_path):
    first = tmp_path / "stage1.pt"
    record = run_pretrain_tiny_sam2(out=first, steps=3, lr=1e-3, eval_clips=2, config="tiny",
                                    image_fraction=0.5, threads=0, log=lambda _: None)
    assert record["sha256"] == _sha(first) and record["init"] is None
    assert 0.0 <= record["eval"]["cond_iou"] <= 1.0 and record["eval"]["clips"] == 2
    model = build_sam2_model("tiny", checkpoint=first)  # strict load through the official path
    trained = torch.load(first, weights_only=True)["model"]
    random = build_sam2_model("tiny").state_dict()
    assert any(not torch.equal(trained[k].float(), random[k]) for k in trained if trained[k].is_floating_point())
    assert all(not p.requires_grad for p in model.parameters())

    second = tmp_path / "stage2.pt"
    record2 = run_pretrain_tiny_sam2(out=second, steps=2, lr=1e-3, eval_clips=2, config="tiny",
                                     image_fraction=0.0, init=first, threads=0, log=lambda _: None)
    assert record2["init"]["sha256"] == record["sha256"]
    assert record2["init"]["recipe"]["command"] == record["command"]
    assert record2["command"].endswith(f"--init {first}")
    assert _sha(second) != record["sha256"]


def test_vggish_recipe_writes_the_torchvggish_layout(tmp_path):
    out = tmp_path / "vggish.pth"
    record = run_pretrain_tiny_vggish(out=out, steps=2, eval_batches=1, threads=0, log=lambda _: None)
    assert record["sha256"] == _sha(out)
    state = torch.load(out, weights_only=True)
    assert any(k.startswith("features.") for k in state) and any(k.startswith("embeddings.") for k in state)
    VGGish(VGGishConfig(**record["vggish"])).load_state_dict(state)  # strict: the recorded architecture
