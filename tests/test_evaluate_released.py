"""`auralsam2 evaluate` on a checkpoint in the RELEASED AuralSAM2 layout (every key and shape of the
published key list, random weights), with the released-size fuser (256-d) on the SAM 2.0 Hiera-T
config at a reduced 128 px input, over a few tiny clips: the loading path plus a real evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from auralsam2.audio import VGGish
from auralsam2.fuser import AuralFuser, FuserConfig
from flows.cli import app
from tests.train_fixtures import tiny_cache

KEYS = Path(__file__).parent / "data" / "released_checkpoint_keys" / "auralfuser_avs.json"


def released_checkpoint(path: Path) -> Path:
    """A full-model dict as `inference.py` accepts it: `aural_fuser.*` (our init, which has the
    released names), the released-but-unused tensors and VGGish under `aural_fuser.vgg.*`, plus
    SAM2 keys under `v_model.*` (ignored: SAM2 comes from its own .pt)."""
    torch.manual_seed(0)
    fuser = AuralFuser(FuserConfig()).state_dict()
    vgg = VGGish().state_dict()
    entries = json.loads(KEYS.read_text())["keys"]
    g = torch.Generator().manual_seed(1)
    state = {}
    for e in entries:
        key = e["key"]
        if key.startswith("vgg."):
            value = vgg[key[4:]]
        elif key in fuser:
            value = fuser[key]
        else:  # built-but-unused in the released model
            value = torch.randn(e["shape"], generator=g)
        assert list(value.shape) == e["shape"], key
        state[f"aural_fuser.{key}"] = value
    state["v_model.sam_mask_decoder.iou_token.weight"] = torch.zeros(1, 256)
    torch.save(state, path)
    return path


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_released_layout_checkpoint_evaluates_through_the_cli(tmp_path):
    checkpoint = released_checkpoint(tmp_path / "auralsam2_avs_v1m.pth")
    cache = tiny_cache("avss", sam2_config="sam2_hiera_t", image_size=128, views=1)
    config = {
        "experiment": "released_layout",
        "data": {"dataset": "avss", "cache": str(cache)},
        "model": {"sam2": {"config": "sam2_hiera_t", "image_size": 128}, "train_vggish": False},
        "train": {"threads": 1},
        "eval": {"splits": ["test"], "max_items": 2, "overlays": 1, "progress": False},
    }
    (tmp_path / "released.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["evaluate", str(checkpoint), "--config", str(tmp_path / "released.yaml")])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "test: 2 items, avsbench_official iou_select: J=" in result.output

    from flows.tracking import client

    run_id = result.output.split("run_id ")[1].split(";")[0]
    run = client().get_run(run_id)
    assert run.info.run_name == "eval-auralsam2_avs_v1m" and run.info.status == "FINISHED"
    assert run.data.params["model.fuser.dim"] == "256" and run.data.tags["evaluated_checkpoint"].endswith(".pth")
    assert 0.0 <= run.data.metrics["test/test/auralsam2_released/iou_select/J"] <= 1.0


def test_released_checkpoint_without_config_is_refused(tmp_path):
    checkpoint = tmp_path / "released.pth"  # a (fragment of a) released fuser dict: no config inside
    torch.save({"aural_fuser.patch_embeds.0.weight": torch.zeros(256, 256, 4, 4)}, checkpoint)
    result = CliRunner().invoke(app, ["evaluate", str(checkpoint)])
    assert result.exit_code == 1 and "pass --config" in result.output
