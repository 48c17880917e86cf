"""The whole pipeline through real Prefect, real MLflow nested runs and real DuckDB, and its schedule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from auralsam2.config import PROJECT_ROOT
from data_specs.synth import SynthConfig, generate_world
from flows.ablate import SummarySelection, load_grid

# (one warm-up pass: the demo's 32 would cost more than the whole run)
TINY_RUN = ["train.max_steps=2", "train.epochs=1", "train.mask_prompt_warmup_epochs=1", "data.max_val_items=2",
            "eval.splits=[test]", "eval.decodings=[iou_select]", "eval.overlays=1", "experiment=pipeline_test"]
DEMO_TINY = PROJECT_ROOT / "configs" / "demo_tiny.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, SynthConfig(seed=11, clips=4, size=96), progress=False)
    return out


def _mlflow_runs(experiment: str):
    import mlflow

    from auralsam2.paths import mlflow_tracking_uri

    mlflow.set_tracking_uri(mlflow_tracking_uri())
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def test_pipeline_with_a_two_row_grid_then_rerun_skips(world: Path) -> None:
    from auralsam2.paths import data_home
    from dashboards.views import connect
    from flows.pipeline import run_pipeline

    selection = SummarySelection(split="test", protocol="avsbench_official", decoding="iou_select", subsets=["v1m", "v2"])
    result = run_pipeline(DEMO_TINY, TINY_RUN, raw=world / "AVSBench", ablate_grid="smoke", selection=selection)
    assert result["ingest"]["clips_quarantined"] == 0
    assert Path(result["train"]["best_checkpoint"]).is_file()
    assert set(result["evaluate"]["splits"]) == {"test"}

    ablation = result["ablation"]
    assert [r["row"] for r in ablation["rows"]] == [r.name for r in load_grid("smoke")] == ["full", "visual_only"]
    # The grid's `full` row is the pipeline's own training run (same config), not a second training.
    full = next(r for r in ablation["results"] if r["row"] == "full")
    assert full["reused"] and full["checkpoint"] == result["train"]["best_checkpoint"]

    runs = _mlflow_runs("pipeline_test")
    parent = ablation["parent_run_id"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert {r.info.run_name.split("-")[0] for r in children} == {"visual_only"}
    assert any(r.info.run_id == parent and r.info.status == "FINISHED" for r in runs)

    con = connect(data_home())
    rows = con.execute("select row, J, F, J_and_F from ablation_summary where parent_run_id = ? order by row",
                       [parent]).fetchall()
    assert [r[0] for r in rows] == ["full", "visual_only"]
    assert all(0.0 <= r[1] <= 1.0 and abs(r[3] - (r[1] + r[2]) / 2) < 1e-12 for r in rows)
    n_clip_rows = con.execute("select count(*) from clip_metrics where run_id = ?", [result["train"]["run_id"]]).fetchone()[0]
    assert n_clip_rows > 0

    # Re-running skips every finished step: no new training run, identical outputs.
    ckpt = Path(result["train"]["best_checkpoint"])
    mtime = ckpt.stat().st_mtime_ns
    n_runs = len(runs)
    again = run_pipeline(DEMO_TINY, TINY_RUN, raw=world / "AVSBench")
    assert again["train"]["best_checkpoint"] == str(ckpt) and ckpt.stat().st_mtime_ns == mtime
    assert again["cache"]["fingerprint"] == result["cache"]["fingerprint"]
    assert len(_mlflow_runs("pipeline_test")) == n_runs


def test_grid_rows_in_parallel_lanes_match_sequential_rows(world: Path) -> None:
    from flows.ablate import run_ablate
    from flows.pipeline import run_pipeline

    selection = SummarySelection(split="test", protocol="avsbench_official", decoding="iou_select")
    results = {}
    for workers in (2, 1):
        overrides = [*TINY_RUN, f"experiment=rows_{workers}"]
        if workers == 2:  # in the pipeline: the grid first, then its train and evaluate steps reuse the `full` row
            piped = run_pipeline(DEMO_TINY, overrides, raw=world / "AVSBench", ablate_grid="smoke",
                                 selection=selection, row_workers=2)
            out = piped["ablation"]
            full = next(r for r in out["results"] if r["row"] == "full")
            assert piped["train"]["best_checkpoint"] == full["checkpoint"]
            assert piped["evaluate"]["reused_from_row"] == "full"
            assert piped["evaluate"]["run_id"] == piped["train"]["run_id"] == full["run_id"]
            assert piped["evaluate"]["splits"]["test"] == full["evaluated"]["test"]
            assert piped["evaluate"]["splits"]["test"]["J"] == full["J"]
        else:
            out = run_ablate(DEMO_TINY, overrides, grid="smoke", selection=selection, row_workers=workers)
        results[workers] = {r["row"]: (r["J"], r["F"]) for r in out["rows"]}
        pids = {r["row"]: r["pid"] for r in out["results"]}
        # 2 lanes: this process takes the first row, a worker process the second; 1 lane: all here
        assert pids["full"] == os.getpid()
        assert (pids["visual_only"] != os.getpid()) == (workers == 2)
        assert {r.info.run_name.split("-")[0] for r in _mlflow_runs(f"rows_{workers}")} >= {"full", "visual_only"}
    assert results[2] == results[1]


def test_the_grid_hands_out_the_costlier_rows_first() -> None:
    from auralsam2.config import load_config
    from flows.ablate import costliest_first, row_config

    demo = load_config(PROJECT_ROOT / "configs" / "demo.yaml")
    rows = {row.name: row_config(demo, row) for row in load_grid("demo")}
    assert list(rows) == ["full", "visual_only", "no_audiocon", "no_sparse"]
    # a warm-up of the map first (no AudioCon: nothing to warm up), then the audio path; ties in grid order
    assert [list(rows)[i] for i in costliest_first(list(rows.values()))] == [
        "full", "no_sparse", "no_audiocon", "visual_only"]


def test_summary_puts_the_papers_number_next_to_ours(tmp_path: Path) -> None:
    from auralsam2.config import load_config
    from flows.ablate import summary_markdown, summary_rows

    base = load_config(DEMO_TINY)
    key = f"{base.experiment}/{base.model.sam2.config}"
    grid = tmp_path / "ablations.yaml"
    grid.write_text(f"""
grids: {{g: [full, visual_only]}}
rows:
  full: {{table: "Tables 3-5", overrides: {{}}, paper: {{"{key}": {{J: 0.80, F: 0.90, table: "Table 4"}}}}}}
  visual_only: {{table: "Table 3", overrides: {{model.fuser.modalities: visual}}, paper: {{"other/hiera_l": {{J: 0.5}}}}}}
""")
    rows = load_grid("g", path=grid)
    results = [{"protocol": "avsbench_official", "J": 0.75, "F": 0.85}, {"protocol": "avsbench_official", "J": 0.5, "F": 0.6}]
    table = summary_rows(results, rows, base, "parent", SummarySelection())
    assert (table[0]["paper_J"], table[0]["paper_F"], table[0]["paper_table"]) == (0.80, 0.90, "Table 4")
    assert (table[1]["paper_J"], table[1]["paper_table"]) == (None, "Table 3")  # another dataset/backbone's number
    md = summary_markdown(table, "t").splitlines()
    assert md[4] == "| full | 0.750 | 0.850 | 0.800 | 0.800 | 0.900 | -0.050 | Table 4 |"
    assert md[5] == "| visual_only | 0.500 | 0.600 | 0.550 | n/a | n/a | n/a | Table 3 |"


def test_refavs_summary_has_one_row_per_split_and_protocol_with_s_and_the_papers_numbers(tmp_path: Path) -> None:
    from auralsam2.config import load_config
    from flows.ablate import summary_markdown, summary_rows

    base = load_config(PROJECT_ROOT / "configs" / "refavs_hiera_l.yaml")
    rows = load_grid("demo_refavs")
    assert [r.name for r in rows] == ["full", "audio_visual", "text_visual", "visual_only"]
    numbers = [{"split": s, "protocol": p, "J": 0.5 if s != "test_n" else float("nan"),
                "F": 0.6 if s != "test_n" else float("nan"), "S": 0.1 if s == "test_n" else float("nan")}
               for s in ("test_s", "test_u", "test_n") for p in ("refavs_official", "auralsam2_released")]
    results = [{"numbers": numbers, **numbers[0]} for _ in rows]
    table = summary_rows(results, rows, base, "parent", SummarySelection(splits=["test_s", "test_u", "test_n"]))
    assert len(table) == 4 * 3 * 2 and {r["dataset"] for r in table} == {"refavs"}
    full_s = next(r for r in table if (r["row"], r["split"], r["protocol"]) == ("full", "test_s", "refavs_official"))
    assert (full_s["paper_J"], full_s["paper_F"], full_s["paper_table"]) == (0.5616, 0.6119, "Table 1")
    full_n = next(r for r in table if (r["row"], r["split"], r["protocol"]) == ("full", "test_n", "refavs_official"))
    assert full_n["S"] == 0.1 and full_n["paper_S"] == 0.065
    text_s = next(r for r in table if (r["row"], r["split"]) == ("text_visual", "test_s"))
    assert text_s["paper_J"] == 0.5295 and text_s["paper_table"] == "Figure 3"
    md = summary_markdown(table, "t").splitlines()
    assert md[2].startswith("| row | split | protocol | J | F | J&F | S |")
    assert "| full | test_n | refavs_official | n/a | n/a | n/a | 0.100 (paper 0.065) |" in "\n".join(md)


def test_the_demo_command_has_plain_defaults_for_the_benchmark_that_calls_it() -> None:
    # `python -m bench pipeline` calls `demo(...)` as a function: a typer.Option default would reach the
    # pipeline as an OptionInfo object (it once named the Ref-AVS grid "<typer.models.OptionInfo ...>")
    import inspect

    from flows.cli import demo

    defaults = {name: p.default for name, p in inspect.signature(demo).parameters.items()}
    assert defaults == {"clips": None, "seed": 0, "grid": "demo", "refavs_grid": "demo_refavs", "row_workers": 2}
