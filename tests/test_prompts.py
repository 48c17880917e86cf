"""The paper's prompt-engineering protocol (Tables 6-7): GT-derived SAM2 prompts on the conditioning
frame, for SAM2 alone and for AuralSAM2, through `auralsam2 evaluate --prompts` into MLflow and DuckDB."""

from __future__ import annotations

import csv
import io
import math

import pytest
import torch
from typer.testing import CliRunner

from auralsam2.evaluation import PROMPT_MODES, gt_prompts, parse_prompt_modes


def _mask() -> torch.Tensor:
    mask = torch.zeros(32, 48, dtype=torch.bool)
    mask[5:12, 20:31] = True
    return mask


def test_points_lie_in_the_mask_box_is_its_bounding_box_and_both_are_seeded():
    mask = _mask()
    points = gt_prompts(mask, "points", 64, "clip-a").point_inputs
    coords = points["point_coords"][0] / torch.tensor([64 / 48, 64 / 32])  # back to mask pixels
    assert coords.shape == (4, 2) and points["point_labels"].tolist() == [[1, 1, 1, 1]]
    assert all(mask[int(y), int(x)] for x, y in coords.tolist())
    assert torch.equal(points["point_coords"], gt_prompts(mask, "points", 64, "clip-a").point_inputs["point_coords"])
    assert not torch.equal(points["point_coords"], gt_prompts(mask, "points", 64, "clip-b").point_inputs["point_coords"])
    box = gt_prompts(mask, "box", 64, "clip-a").point_inputs
    assert box["point_labels"].tolist() == [[2, 3]]
    corners = box["point_coords"][0] / torch.tensor([64 / 48, 64 / 32])
    assert torch.allclose(corners, torch.tensor([[20.0, 5.0], [31.0, 12.0]]))
    both = gt_prompts(mask, "points+box", 64, "clip-a").point_inputs
    assert both["point_labels"].tolist() == [[2, 3, 1, 1, 1, 1]]
    full = gt_prompts(mask, "mask", 64, "clip-a").cond_mask
    assert full.shape == (1, 1, 64, 64) and full.dtype == torch.bool and full.sum() > 0
    assert gt_prompts(torch.zeros(8, 8, dtype=torch.bool), "box", 64, "x") is None
    assert parse_prompt_modes("points, box,points+box,mask") == PROMPT_MODES
    with pytest.raises(ValueError, match="prompt modes"):
        parse_prompt_modes("points,clicks")


def _query(sql: str) -> list[dict[str, str]]:
    from flows.cli import app

    result = CliRunner().invoke(app, ["query", "--csv", sql])
    assert result.exit_code == 0, result.output
    return list(csv.DictReader(io.StringIO(result.output)))


def test_evaluate_prompts_for_sam2_alone_and_auralsam2(tmp_path):
    from auralsam2.engine import build_model
    from auralsam2.engine.state import save_best
    from feature_cache.dataset import open_reader
    from flows.cli import app
    from flows.tracking import client
    from tests.train_fixtures import tiny_config

    cfg = tiny_config("experiment=prompt_tests", "eval.overlays=0")
    torch.manual_seed(0)
    model = build_model(cfg.model, open_reader(cfg).model)
    checkpoint = tmp_path / "prompted.ckpt"
    save_best(checkpoint, model, cfg, 0, 0, math.nan, None, None)

    result = CliRunner().invoke(app, ["evaluate", str(checkpoint), "--split", "test", "--prompts",
                                      "points,box,points+box,mask"])
    assert result.exit_code == 0, result.output
    assert "prompt engineering on test" in result.output and "72.64" in result.output  # paper Table 6
    run_id = result.output.split("run_id ")[1].split(";")[0]

    combos = _query(f"select method, prompts, count(distinct clip_key) as clips from clip_metrics "
                    f"where run_id = '{run_id}' group by all order by all")
    assert {(r["method"], r["prompts"]) for r in combos} == {
        ("auralsam2", "none"), *{(m, p) for m in ("sam2", "auralsam2") for p in PROMPT_MODES}}
    assert all(r["clips"] == "3" for r in combos)
    # the GT mask is the conditioning frame's output (stock SAM2): that frame is right
    cond = _query(f"select min(J) as j from frame_metrics where run_id = '{run_id}' and method = 'sam2' "
                  "and prompts = 'mask' and frame = 0 and protocol = 'avsbench_official'")
    assert float(cond[0]["j"]) > 0.9
    # SAM2 alone does not depend on the fuser: its rows differ from AuralSAM2's with the same prompts
    pairs = _query(f"select a.J as a, s.J as s from clip_metrics a join clip_metrics s using "
                   f"(run_id, clip_key, protocol, decoding, prompts) where a.run_id = '{run_id}' and "
                   "a.method = 'auralsam2' and s.method = 'sam2' and a.prompts = 'points'")
    assert len(pairs) == 6 and any(p["a"] != p["s"] for p in pairs)

    metrics = client().get_run(run_id).data.metrics
    assert "prompts/sam2/points_box/test/test/avsbench_official/iou_select/J" in metrics
    assert metrics["prompts/auralsam2/mask/test/test/frames_per_s"] > 0
    assert "test/test/avsbench_official/iou_select/J" in metrics  # the audio-only pass as before
