"""auralsam2: AuralSAM2 as a pipeline. Synthetic world -> ingest -> feature cache -> train -> evaluate.

Every command writes under the data folder ($AURALSAM2_HOME, default ./data) unless told otherwise.
Errors about your input, files or disk are one `error:` line; add --debug for the traceback.
"""

from __future__ import annotations

import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

import flows  # noqa: F401  (applies the embedded Prefect/MLflow defaults before Prefect is imported)
from auralsam2.paths import data_home
from flows.console import fail

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__, pretty_exceptions_enable=False)


class Dataset(StrEnum):
    avss = "avss"
    avsbench_s4 = "avsbench-s4"
    avsbench_ms3 = "avsbench-ms3"
    refavs = "refavs"


class Overlap(StrEnum):
    cancel = "cancel"
    wait = "wait"


@app.command()
def synth(
    out: Path = typer.Option(None, help="Output folder (default: <data>/world). Writes OUT/AVSBench and OUT/REFAVS."),
    seed: int = typer.Option(0, help="Random seed; the same seed writes byte-identical files."),
    clips: int = typer.Option(None, help="Clips per AVSS subset (v1s, v1m, v2) and Ref-AVS media folders."),
    size: int = typer.Option(None, help="Frame width in pixels."),
    v1: bool = typer.Option(False, "--v1", help="Also write the AVSBench release-1 (S4/MS3) layouts under OUT/AVSBench-object."),
) -> None:
    """Write the synthetic audio-visual world in the real AVSBench-semantic and Ref-AVS layouts."""
    from data_specs.synth import SynthConfig, generate_avsbench_v1, generate_world

    out = (out or data_home() / "world").resolve()
    overrides = {k: v for k, v in {"seed": seed, "clips": clips, "size": size}.items() if v is not None}
    config = SynthConfig(**overrides)
    summary = generate_world(out, config)
    typer.echo(f"synthetic world written to {out}")
    typer.echo(str(summary))
    if v1:
        generate_avsbench_v1(out / "AVSBench-object", config)
        typer.echo(f"AVSBench release-1 layouts written to {out / 'AVSBench-object'}")


@app.command()
def ingest(
    dataset: Dataset = typer.Option(..., help="Which release layout --root holds."),
    root: Path = typer.Option(..., exists=True, file_okay=False, help="The raw dataset folder."),
    out: Path = typer.Option(..., help="Ingest folder: shards/, manifest.parquet, ingest_report.parquet."),
    subset: str = typer.Option("all", help="AVSS: v1s, v1m, v2 or all (the merged pool). Others: all."),
    strict: bool = typer.Option(False, help="Fail on the first error instead of quarantining the clip."),
    clips_per_shard: int = typer.Option(64, min=1, help="Clips per WebDataset shard."),
    workers: int = typer.Option(None, help="Run shard tasks on a local Dask cluster of N workers."),
    dask: str = typer.Option(None, help="Run shard tasks on an existing Dask scheduler (tcp://host:8786)."),
    force: bool = typer.Option(False, "--force", help="Replace an ingest of another raw root or dataset in --out."),
    follow_symlinks: bool = typer.Option(False, "--follow-symlinks", help="Read clip folders and files that are "
                                         "symlinks out of --root (default: an unsafe_path finding; clip quarantined)."),
) -> None:
    """Read, check and shard a raw dataset (one Prefect task per shard)."""
    from auralsam2.utils.locks import FolderBusyError
    from data_specs.common import StrictModeError
    from flows.ingest import run_ingest

    try:
        summary = run_ingest(dataset.value, root, out, subset=subset, strict=strict,
                             clips_per_shard=clips_per_shard, workers=workers, dask_address=dask, force=force,
                             follow_symlinks=follow_symlinks)
    except (StrictModeError, FileNotFoundError, ValueError, FolderBusyError) as exc:
        fail(str(exc))
    typer.echo("\n".join(summary.lines()))


DEMO_SELECTION = {"split": "test", "protocol": "avsbench_official", "decoding": "iou_select", "subsets": ["v1m", "v2"]}
DEMO_REFAVS_SELECTION = {"split": "test_s", "splits": ["test_s", "test_u", "test_n"], "decoding": "iou_select",
                         "protocols": ["refavs_official", "auralsam2_released"]}


def _hears_line(rows: dict[str, dict]) -> str | None:
    if "full" not in rows or "visual_only" not in rows:
        return None
    full, visual = rows["full"]["J"], rows["visual_only"]["J"]
    hears = full >= 0.6 and full - visual >= 0.15
    return (f"Does it hear? Multi-source test split (v1m + v2), AVSBench protocol: full J = {full:.3f}, "
            f"visual-only J = {visual:.3f}, difference {full - visual:+.3f} "
            f"(target: J >= 0.6 and difference >= 0.15): {'YES' if hears else 'NOT YET'}")


def _hears_and_reads_line(table: list[dict]) -> str | None:
    """Ref-AVS official protocol: full J on test_s (>= 0.5) and test_u vs the better single-modality
    row (>= +0.10 on both), and S on test_n below visual-only's."""
    at = {(r["row"], r["split"]): r for r in table if r["protocol"] == "refavs_official"}
    need = [(row, split) for row in ("full", "audio_visual", "text_visual", "visual_only")
            for split in ("test_s", "test_u", "test_n")]
    if any(k not in at for k in need):
        return None
    checks, parts = [], []
    for split in ("test_s", "test_u"):
        full = at[("full", split)]["J"]
        single = max(at[("audio_visual", split)]["J"], at[("text_visual", split)]["J"])
        checks.append(full - single >= 0.10)
        parts.append(f"{split}: full J = {full:.3f} vs best single modality {single:.3f} ({full - single:+.3f})")
    checks.append(at[("full", "test_s")]["J"] >= 0.5)
    s_full, s_visual = at[("full", "test_n")]["S"], at[("visual_only", "test_n")]["S"]
    checks.append(s_full is not None and s_visual is not None and s_full < s_visual)
    parts.append(f"test_n: S full {s_full if s_full is None else round(s_full, 3)} vs visual-only "
                 f"{s_visual if s_visual is None else round(s_visual, 3)}")
    return (f"Does it hear and read? Ref-AVS official protocol: {'; '.join(parts)} (targets: full J >= 0.5 on "
            f"test_s, >= +0.10 over the better single modality on test_s and test_u, S below visual-only): "
            f"{'YES' if all(checks) else 'NOT YET'}")


@app.command()
def demo(  # defaults in the signature, not in typer.Option: `bench.bench_pipeline` calls it as a function
    clips: Annotated[int | None, typer.Option(help="Clips per subset of the synthetic world (default: the world's "
                                                   "default).")] = None,
    seed: Annotated[int, typer.Option(help="World seed.")] = 0,
    grid: Annotated[str, typer.Option(help="AVSBench ablation grid of configs/ablations.yaml.")] = "demo",
    refavs_grid: Annotated[str, typer.Option(help="Ref-AVS ablation grid ('' skips Ref-AVS).")] = "demo_refavs",
    row_workers: Annotated[int, typer.Option(help="Grid rows trained at once (this process and N-1 worker processes, "
                                                  "one torch thread each).")] = 2,
) -> dict:
    """The whole chain on the built-in synthetic world, for both datasets: world -> shards -> cache ->
    a mini ablation grid (rows in parallel, here and in a worker process; its `full` row is the trained
    model) -> evaluate -> MLflow -> Parquet; AVSBench, then Ref-AVS (audio + text); prints the tables
    and where everything is."""
    import time

    from auralsam2.config import demo_config_path
    from data_specs.synth import SynthConfig, generate_world
    from flows.ablate import SummarySelection
    from flows.pipeline import run_pipeline

    started = time.perf_counter()
    home = data_home()
    world = home / "world"
    config = SynthConfig(seed=seed, **({"clips": clips} if clips else {}))
    steps = 3 if refavs_grid else 2
    typer.echo(f"[1/{steps + 1}] synthetic world -> {world}")
    generate_world(world, config, progress=False)
    timings = {"world": time.perf_counter() - started}
    order = (f"the '{{grid}}' ablation grid ({row_workers} rows at a time) -> train (its `full` row) -> evaluate"
             if row_workers > 1 else "train -> evaluate -> the '{grid}' ablation grid")
    runs = [("AVSBench", demo_config_path("demo"), world / "AVSBench", grid, DEMO_SELECTION)]
    if refavs_grid:
        runs.append(("Ref-AVS", demo_config_path("demo_refavs"), world / "REFAVS", refavs_grid, DEMO_REFAVS_SELECTION))
    results = {}
    for step, (name, config_path, raw, grid_name, selection) in enumerate(runs, 2):
        typer.echo(f"[{step}/{steps + 1}] {name} pipeline ({config_path.name}): ingest -> cache -> "
                   + order.format(grid=grid_name))
        results[name] = run_pipeline(config_path, raw=raw, ablate_grid=grid_name,
                                     selection=SummarySelection(**selection), row_workers=row_workers)
        timings.update({f"{name} {k}": v for k, v in results[name]["timings"].items()})
    typer.echo(f"[{steps + 1}/{steps + 1}] results")
    for name, result in results.items():
        ablation = result["ablation"]
        typer.echo(ablation["markdown"])
        line = _hears_line({r["row"]: r for r in ablation["rows"]}) if name == "AVSBench" else \
            _hears_and_reads_line(ablation["rows"])
        if line:
            typer.echo(line + "\n")
    from flows.report import run_report

    report_started = time.perf_counter()
    index = run_report()
    timings["report"] = time.perf_counter() - report_started
    total = time.perf_counter() - started
    typer.echo("time per step: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f"; total {total:.0f} s")
    from auralsam2.paths import mlflow_tracking_uri

    uri = shlex.quote(mlflow_tracking_uri())
    typer.echo(f"""
Outputs (all under {home}):
  world          {world}
  shards         {home / 'ingest'}
  feature cache  {home / 'cache'}
  runs           {home / 'runs'}
  metrics        {home / 'metrics'}   (Parquet: frame_metrics, clip_metrics, ablation_summary)
  report         {index}   (open it in a browser; `auralsam2 report` rewrites it)
Next:
  MLflow UI      .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000
  DuckDB query   .venv/bin/auralsam2 query worst_clips --param limit=10
                 .venv/bin/auralsam2 query "select dataset, row, split, protocol, J, F, S from ablation_summary order by all"
""")
    return {"results": results, "timings": timings, "total_s": total,
            "rows": {r["row"]: r for r in results["AVSBench"]["ablation"]["rows"]},
            "refavs_rows": results["Ref-AVS"]["ablation"]["rows"] if "Ref-AVS" in results else [],
            "row_results": [x for res in results.values() for x in res["ablation"]["results"]]}


@app.command()
def train(
    config: Path = typer.Argument(None, help="Experiment config YAML (presets in configs/); omit for all defaults."),
    set_: list[str] = typer.Option([], "--set", help="Override a field: --set optim.lr=3e-4 (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue run_name (default: the latest unfinished run) "
                                "from its last.ckpt, in the same MLflow run."),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", min=1, help="Processes (GPUs) for DDP via torchrun."),
    parent_run_id: str = typer.Option(None, "--parent-run-id", help="Log as a nested run of this MLflow run."),
    no_tracking: bool = typer.Option(False, "--no-tracking", help="Do not log to MLflow."),
) -> None:
    """Train AuralSAM2 on a feature cache (a Prefect flow; logs an MLflow run)."""
    from auralsam2.config import ConfigError
    from feature_cache.schema import CacheError
    from flows.train import run_train

    try:
        summary = run_train(config, set_, resume=resume, parent_run_id=parent_run_id, tracking=not no_tracking,
                            nproc=nproc_per_node)
    except (ConfigError, CacheError, FileNotFoundError, FileExistsError, ValueError) as exc:
        fail(str(exc))
    state = "interrupted" if summary["interrupted"] else "finished"
    typer.echo(f"training {state} after {summary['steps']}/{summary['total_steps']} steps: {summary['run_dir']}")
    typer.echo(f"best {summary['selection']} = {summary['best_metric']:.4f} at step {summary['best_step']}"
               f" -> {summary['best_checkpoint']}")
    if summary["run_id"]:
        typer.echo(f"MLflow run {summary['run_id']}")


@app.command()
def evaluate(
    checkpoint: Path = typer.Argument(..., dir_okay=False, help="best.ckpt of a run, or a released "
                                      "AuralSAM2 .pth (then --config is required)."),
    config: Path = typer.Option(None, "--config", help="Experiment config (default: the one inside the checkpoint)."),
    split: list[str] = typer.Option([], "--split", help="Split to evaluate (repeatable; default: eval.splits)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field (repeatable)."),
    run_id: str = typer.Option(None, "--run-id", help="MLflow run to log into (default: the checkpoint's run)."),
    no_tracking: bool = typer.Option(False, "--no-tracking", help="Do not log to MLflow."),
    prompts: str = typer.Option(None, "--prompts", help="Also run the paper's prompt-engineering protocol "
                                "(Tables 6-7) in these modes, e.g. points,box,points+box,mask: SAM2 prompts from "
                                "the GT on the conditioning frame, for SAM2 alone and for AuralSAM2 with audio."),
) -> None:
    """Evaluate a checkpoint: official protocols, per-frame/per-clip Parquet, MLflow metrics and overlays."""
    from auralsam2.config import ConfigError
    from auralsam2.evaluation import parse_prompt_modes
    from feature_cache.schema import CacheError
    from flows.evaluate import run_evaluate

    try:
        modes = parse_prompt_modes(prompts) if prompts else ()
        summary = run_evaluate(checkpoint, config, set_, splits=split or None, run_id=run_id,
                               tracking=not no_tracking, prompts=modes)
    except (ConfigError, CacheError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    for name, result in summary["splits"].items():
        parts = [f"{k}={result[k]:.4f}" for k in ("J", "F", "S") if result[k] == result[k]]
        typer.echo(f"{name}: {result['n_items']} items, {result['protocol']} {result['decoding']}: {' '.join(parts)}")
        if result["prompts"]:
            typer.echo(_prompts_table(name, result["prompts"]))
    typer.echo(f"run_id {summary['run_id']}; per-clip metrics: auralsam2 query worst_clips --param "
               f"run_id={summary['run_id']}")


def _prompts_table(split: str, rows: list[dict]) -> str:
    """The prompt-engineering rows of one split beside the paper's Tables 6-7 (V1m, Hiera-B+)."""
    def num(value, scale=1.0):
        return "-" if value is None or value != value else f"{value * scale:.2f}"

    lines = [f"prompt engineering on {split} (ours; paper: AVSBench V1m, Hiera-B+, its GPU):",
             f"  {'method':<10} {'prompts':<11} {'J':>6} {'F':>6} {'fps':>8}   {'paper J':>7} {'paper F':>7} {'paper fps':>9}"]
    for r in rows:
        lines.append(f"  {r['method']:<10} {r['prompts']:<11} {num(r['J'], 100):>6} {num(r['F'], 100):>6} "
                     f"{num(r['frames_per_s']):>8}   {num(r['paper_J'], 100):>7} {num(r['paper_F'], 100):>7} {num(r['paper_fps']):>9}"
                     + (f"   ({r['n_unprompted']} items had no GT to prompt with)" if r["n_unprompted"] else ""))
    return "\n".join(lines)


@app.command()
def run(
    config: Path = typer.Argument(..., help="Experiment config YAML (presets in configs/)."),
    raw: Path = typer.Option(None, exists=True, file_okay=False, help="Raw dataset folder to ingest first (omit "
                             "when data.ingest already holds the shards)."),
    subset: str = typer.Option("all", help="AVSS subset to ingest (v1s, v1m, v2, all)."),
    ablate: str = typer.Option(None, "--ablate", help="Also run this ablation grid of configs/ablations.yaml."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field (repeatable)."),
    workers: int = typer.Option(None, help="Local Dask cluster of N workers for the ingest and cache steps."),
    dask: str = typer.Option(None, help="Existing Dask scheduler (tcp://host:8786) for the ingest and cache steps."),
    row_workers: int = typer.Option(1, help="Ablation rows trained at once: this process and N-1 worker processes."),
) -> None:
    """Run the pipeline once: ingest -> cache -> train -> evaluate (-> ablate), skipping finished steps."""
    from auralsam2.config import ConfigError
    from flows.pipeline import run_pipeline

    try:
        result = run_pipeline(config, set_, raw=raw, subset=subset, ablate_grid=ablate, workers=workers,
                              dask_address=dask, row_workers=row_workers)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"{result['experiment']}: run {result['run_name']}, best checkpoint {result['train']['best_checkpoint']}")
    for split, r in result["evaluate"]["splits"].items():
        typer.echo(f"  {split}: {r['protocol']} {r['decoding']} J={r['J']:.4f} F={r['F']:.4f}")
    if result["ablation"]:
        typer.echo(result["ablation"]["markdown"])
    typer.echo("time per step: " + ", ".join(f"{k} {v:.1f} s" for k, v in result["timings"].items()))


@app.command()
def serve(
    config: Path = typer.Argument(..., help="Experiment config YAML."),
    cron: str = typer.Option(..., help='Cron schedule, e.g. "0 3 * * *" (every day at 03:00).'),
    raw: Path = typer.Option(None, exists=True, file_okay=False, help="Raw dataset folder to (re)ingest each run."),
    ablate: str = typer.Option(None, "--ablate", help="Also run this ablation grid each time."),
    name: str = typer.Option(None, help="Deployment name (default: <experiment>-pipeline)."),
    overlap: Overlap = typer.Option(Overlap.cancel, help="A firing while the previous run still goes: 'cancel' it (state "
                                "Cancelled) or let it 'wait' for that run (state AwaitingConcurrencySlot)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field (repeatable)."),
) -> None:
    """Schedule the pipeline on a Prefect server and serve it (blocks until interrupted).

    Start a server first: `prefect server start --host 127.0.0.1` and
    `export PREFECT_API_URL=http://127.0.0.1:4200/api`. Each firing runs what `auralsam2 run` runs
    (finished steps are skipped); `prefect deployment run pipeline/NAME` fires it now. One run at a
    time (see --overlap); a failed run's state message is the line `auralsam2 run` would print.
    """
    from auralsam2.config import ConfigError
    from flows.pipeline import serve_pipeline

    try:
        serve_pipeline(config, cron, set_, raw=raw, ablate_grid=ablate, name=name, overlap=overlap.value)
    except (ConfigError, RuntimeError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))


@app.command()
def ablate(
    config: Path = typer.Argument(..., help="Experiment config YAML the rows modify."),
    grid: str = typer.Option("paper", help="Grid of configs/ablations.yaml (paper, demo, smoke)."),
    rows: str = typer.Option(None, help="Comma-separated row names instead of a grid."),
    split: str = typer.Option(None, help="Split of the summary numbers (default: test for AVSBench; test_s, test_u "
                              "and test_n for Ref-AVS)."),
    subsets: str = typer.Option("", help="Comma-separated subsets of the summary numbers (default: all)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field (repeatable)."),
    row_workers: int = typer.Option(1, help="Rows trained at once: this process and N-1 worker processes (one torch thread each)."),
) -> None:
    """Train and evaluate an ablation grid as nested MLflow runs; write the summary table."""
    from auralsam2.config import ConfigError, load_config
    from flows.ablate import SummarySelection, run_ablate

    picked = [s for s in subsets.split(",") if s]
    try:  # without --split, the config's dataset decides (Ref-AVS has no `test`)
        selection = SummarySelection(split=split, subsets=picked) if split else \
            SummarySelection.default_for(load_config(config, set_), picked)
        result = run_ablate(config, set_, grid=grid, rows=rows.split(",") if rows else None, selection=selection,
                            row_workers=row_workers)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(result["markdown"])
    typer.echo(f"parent run {result['parent_run_id']}; summary {result['summary']}")


@app.command()
def query(
    sql: str = typer.Argument(None, help="SQL over the views (runs, frame_metrics, clip_metrics, ablation_summary), "
                              "or the name of a canned query (see --list)."),
    csv_out: bool = typer.Option(False, "--csv", help="Print CSV instead of a table."),
    param: list[str] = typer.Option([], "--param", help="k=v parameter of a canned query (repeatable)."),
    list_queries: bool = typer.Option(False, "--list", help="List the views and the canned queries."),
    refresh_runs: bool = typer.Option(True, help="Export the MLflow runs table before querying."),
) -> None:
    """Query per-frame/per-clip metrics, runs and ablation summaries with DuckDB."""
    from dashboards.queries import CANNED, resolve
    from dashboards.views import connect

    home = data_home()
    if list_queries or not sql:
        typer.echo("views: runs, frame_metrics, clip_metrics, ablation_summary")
        for q in CANNED.values():
            params = " ".join(f"--param {k}={v or '...'}" for k, v in q.params.items())
            typer.echo(f"  {q.name} {params}\n      {q.description}")
        return
    if refresh_runs:
        from flows.report import refresh_runs as export_runs_table

        export_runs_table(home)
    con = connect(home)
    overrides = dict(p.split("=", 1) for p in param)
    try:
        if sql in CANNED:
            text, values = resolve(sql, overrides)
            result = con.execute(text, values)
        else:
            result = con.execute(sql)
    except Exception as exc:  # duckdb raises its own error types; show the message, not a traceback
        fail(str(exc))
    columns = [d[0] for d in result.description]
    rows = result.fetchall()
    if csv_out:
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, show_lines=False)
    for row in rows:
        table.add_row(*("" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    Console(width=max(120, 16 * len(columns))).print(table)
    typer.echo(f"{len(rows)} row(s)")


@app.command()
def report(
    out: Path = typer.Option(None, help="Folder to write index.html and assets/ into (default: <data>/report): new, "
                             "empty, or an earlier report (replaced whole); a folder with other files is refused."),
) -> None:
    """Write the static HTML report (opens from disk): ablation grids beside the paper, metrics per split,
    training curves, runs compared, prompt engineering, best and worst clips, ingest and cache summaries."""
    from flows.report import run_report

    index = run_report(out)
    typer.echo(f"report written to {index}")


app.add_typer(__import__("flows.cache", fromlist=["app"]).app, name="cache")  # auralsam2 cache [verify|size]
app.command("segment")(__import__("flows.segment", fromlist=["segment_command"]).segment_command)
for _name, _command in __import__("flows.cli_pretrain", fromlist=["COMMANDS"]).COMMANDS.items():
    app.command(_name)(_command)


def main() -> None:  # pragma: no cover
    """The `auralsam2` entry point: user errors are one line (`flows.console.run_cli`)."""
    from flows.console import run_cli

    run_cli(app)


if __name__ == "__main__":  # `python -m flows.cli ...` too (`python -m flows` is the documented spelling)
    main()
