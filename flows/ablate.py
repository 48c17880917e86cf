"""The ablation grid: every row of `configs/ablations.yaml` as a nested MLflow run under one parent.

    auralsam2 ablate CONFIG [--grid paper|demo|smoke] [--rows a,b] [--set key=value ...]

Each row applies its overrides to the experiment config, trains (one Prefect task per row) and
evaluates on the summary split. A row's run folder is named after its config hash, so a finished
row with the same config is reused instead of retrained (the `full` row is the pipeline's own
training run when the configs agree). The parent run gets the summary table as Parquet (also the
DuckDB view `ablation_summary`), Markdown and a PNG bar chart, with the paper's number for the same
dataset and backbone beside ours where the grid file has it.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from auralsam2.config import (
    PROJECT_ROOT,
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    config_from_mapping,
    config_to_yaml,
    load_config,
    load_yaml,
    resolve_path,
)
from auralsam2.paths import data_home
from auralsam2.utils.files import (
    DamagedFileError,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    read_json,
)
from auralsam2.utils.hashing import sha256_file

GRID_FILE = PROJECT_ROOT / "configs" / "ablations.yaml"


@dataclass
class AblationRow:
    name: str
    description: str
    table: str
    overrides: dict[str, Any]
    datasets: list[str] = field(default_factory=list)
    paper: dict[str, dict[str, Any]] = field(default_factory=dict)

    def applies_to(self, dataset: str) -> bool:
        return not self.datasets or dataset in self.datasets


@dataclass
class SummarySelection:
    """Which numbers the summary table reports for each row: one summary row per (split, protocol).

    With `subsets`, J and F are the means over those subsets' clips of the per-clip values (exact for
    the one-clip-per-call AVS protocols); without, the protocols' own aggregates of the whole split
    (Ref-AVS: J and F per call of 4 expressions, S on the null split)."""

    split: str = "test"
    protocol: str = ""        # default: the config's headline protocol
    decoding: str = ""        # default: the config's primary decoding
    subsets: list[str] = field(default_factory=list)  # e.g. the multi-source subsets; [] = all
    splits: list[str] = field(default_factory=list)  # several splits (Ref-AVS test_s, test_u, test_n); [] = [split]
    protocols: list[str] = field(default_factory=list)  # several protocols; [] = [protocol]

    def split_list(self) -> list[str]:
        return list(self.splits) or [self.split]

    def as_parameter(self) -> dict[str, Any]:
        """Its fields as plain JSON, the form a flow takes it in (a deployment's parameters are JSON)."""
        return asdict(self)

    @classmethod
    def from_parameter(cls, value: dict[str, Any] | None) -> SummarySelection | None:
        return None if value is None else cls(**value)

    @classmethod
    def default_for(cls, cfg: ExperimentConfig, subsets: Sequence[str] = ()) -> SummarySelection:
        """The test split of AVSBench; Ref-AVS's seen, unseen and null test splits (J, F and S); of
        `subsets` (default: all)."""
        if cfg.task == "ref":
            return cls(split="test_s", splits=["test_s", "test_u", "test_n"], subsets=list(subsets))
        return cls(subsets=list(subsets))


def load_grid(grid: str = "paper", rows: Sequence[str] | None = None, path: str | os.PathLike = GRID_FILE
              ) -> list[AblationRow]:
    """The rows of a named grid (or the explicitly named rows), in grid order."""
    data = load_yaml(Path(path).read_text())
    known = data["rows"]
    names = list(rows) if rows else data["grids"].get(grid)
    if names is None:
        raise ValueError(f"{path}: no grid {grid!r}; grids: {sorted(data['grids'])}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"{path}: unknown row(s) {unknown}; rows: {sorted(known)}")
    return [AblationRow(name=n, description=known[n].get("description", ""), table=known[n].get("table", ""),
                        overrides=dict(known[n].get("overrides") or {}), datasets=list(known[n].get("datasets") or []),
                        paper=dict(known[n].get("paper") or {})) for n in names]


def _override_strings(overrides: dict[str, Any]) -> list[str]:
    # JSON is YAML: quoting keeps strings such as "off" from being read as booleans.
    return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]


def config_hash(cfg: ExperimentConfig) -> str:
    """Hash of everything that determines a run's result: the config minus its run name, and the
    identity of the feature cache it trains on when that exists (`cache_identity`: the clips, and
    the frozen SAM2 and text encoder the features and text were computed with). A run of the same
    config on a cache rebuilt from other data or with another encoder is thus another run, never a
    finished one reused."""
    from feature_cache.build import MANIFEST, CacheError, cache_identity, read_cache_json

    text = config_to_yaml(cfg.model_copy(update={"run_name": None}))
    cache = resolve_path(cfg.data.cache, data_home())
    try:
        info = read_cache_json(cache)
    except CacheError:
        info = None
    if info and info.get("status") == "complete" and (cache / MANIFEST).is_file():
        text += f"\ncache_identity: {cache_identity(info, sha256_file(cache / MANIFEST))}\n"
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def row_config(base: ExperimentConfig, row: AblationRow) -> ExperimentConfig:
    """The base config with the row's overrides, named `<row>-<config hash>`."""
    raw = yaml.safe_load(config_to_yaml(base.model_copy(update={"run_name": None})))
    cfg = config_from_mapping(apply_overrides(raw, _override_strings(row.overrides), f"ablation row {row.name!r}"),
                              f"ablation row {row.name!r}")
    return cfg.with_run_name(f"{row.name}-{config_hash(cfg)}")


def row_configs(base: ExperimentConfig, grid: str, rows: Sequence[str] | None) -> list[ExperimentConfig | str]:
    """The grid's row configs that apply to the base's dataset, or, for an invalid one, its error."""
    out: list[ExperimentConfig | str] = []
    for row in load_grid(grid, rows):
        if row.applies_to(base.data.dataset):
            try:
                out.append(row_config(base, row))
            except ConfigError as err:
                out.append(f"ablation row {row.name!r}: {err}")
    return out


def finished_run(cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The result of an earlier finished run of exactly this config (any run named `*-<config hash>`
    in the experiment's run folder, e.g. the pipeline's run for the grid's `full` row), if its best
    checkpoint is still there."""
    from flows.train import run_dir_for

    experiment_dir = run_dir_for(cfg.with_run_name("x")).parent
    for run_dir in sorted(experiment_dir.glob(f"*-{config_hash(cfg)}")) if experiment_dir.is_dir() else []:
        info, result = run_dir / "run.json", run_dir / "result.json"
        if not (info.is_file() and result.is_file()):
            continue
        try:
            meta = read_json(info, "the run record", "")
            summary = read_json(result, "the run result", "")
        except DamagedFileError:
            continue  # trained again

        best = summary.get("best_checkpoint")
        if meta.get("status") == "FINISHED" and best and Path(best).is_file():
            summary.setdefault("run_id", meta.get("run_id"))
            return summary
    return None


def selection_metrics(run_id: str, cfg: ExperimentConfig, sel: SummarySelection, split: str | None = None,
                      protocol: str | None = None) -> dict[str, float]:
    """J and F of one evaluated run for the summary selection, from its clip_metrics Parquet.

    For the one-clip-per-call protocols (AVSBench official, AuralSAM2 released on AVS) the mean
    over clips of the per-clip J and F is exactly the protocol's J and F, also over a subset of clips.
    """
    from dashboards.views import connect

    protocol = protocol or sel.protocol or cfg.eval.headline_protocol
    decoding = sel.decoding or cfg.eval.primary_decoding
    con = connect(data_home())
    where = ["run_id = $run", "split = $split", "protocol = $protocol", "decoding = $decoding", "not is_null"]
    params: dict[str, Any] = {"run": run_id, "split": split or sel.split, "protocol": protocol, "decoding": decoding}
    if sel.subsets:
        where.append("list_contains($subsets, subset)")
        params["subsets"] = list(sel.subsets)
    j, f, n = con.execute(f"select avg(J), avg(F), count(*) from clip_metrics where {' and '.join(where)}",
                          params).fetchone()
    return {"J": float("nan") if j is None else float(j), "F": float("nan") if f is None else float(f),
            "S": float("nan"), "clips": int(n), "protocol": protocol, "decoding": decoding}


# what an evaluation of one split reports in summaries (the pipeline's evaluate step, a grid row)
EVALUATION_HEADLINE = ("J", "F", "S", "protocol", "decoding", "n_items")


@task(name="ablation-row", cache_policy=NO_CACHE)
def ablation_row_task(config_yaml: str, row_name: str, parent_run_id: str | None, sel: SummarySelection,
                      tracking: bool = True) -> dict[str, Any]:
    """Train (or reuse) and evaluate one row; returns paths, hashes and the summary numbers."""
    from flows.evaluate import evaluate_split
    from flows.train import train_or_continue

    cfg = config_from_mapping(yaml.safe_load(config_yaml), f"ablation row {row_name!r}")
    started = time.time()
    done = finished_run(cfg)
    reused = done is not None
    summary = done if reused else train_or_continue(cfg, parent_run_id=parent_run_id, tracking=tracking)
    trained = time.time()
    if not summary.get("best_checkpoint"):
        raise RuntimeError(f"ablation row {row_name!r}: training produced no best checkpoint ({summary})")
    run_id = summary.get("run_id") or f"local-{cfg.run_name}"
    numbers, headlines = [], {}
    for split in sel.split_list():
        evaluated = evaluate_split(summary["best_checkpoint"], cfg, split, run_id, tracking)
        headlines[split] = {k: evaluated[k] for k in EVALUATION_HEADLINE}
        for protocol in sel.protocols or [sel.protocol or cfg.eval.headline_protocol]:
            if sel.subsets:
                numbers.append({"split": split, **selection_metrics(run_id, cfg, sel, split, protocol)})
            else:
                got = evaluated["by_protocol"][protocol]
                numbers.append({"split": split, "protocol": protocol, "decoding": evaluated["decoding"],
                                "J": got["J"], "F": got["F"], "S": got["S"]})
    # wall-clock (epoch) spans of the library work, and when this process started, for benchmarks
    # that run rows in worker processes
    spans = [(started, trained), (trained, time.time())]
    try:
        import psutil  # only benchmarks read this

        process_started = psutil.Process().create_time()
    except ImportError:
        process_started = None
    return {"row": row_name, "run_name": cfg.run_name, "run_id": run_id, "reused": reused, "pid": os.getpid(),
            "library_spans": spans, "process_started": process_started,
            "checkpoint": summary["best_checkpoint"], "evaluated": headlines, "numbers": numbers, **numbers[0]}


def _paper(row: AblationRow, key: str, split: str) -> dict[str, Any]:
    """The paper's numbers for this dataset/backbone: `{J, F, table}`, or per split `{test_s: {...}}`."""
    entry = row.paper.get(key) or {}
    return entry.get(split, entry) if isinstance(entry.get(split), dict) else entry


def summary_rows(results: list[dict[str, Any]], rows: list[AblationRow], base: ExperimentConfig,
                 parent_run_id: str, sel: SummarySelection) -> list[dict[str, Any]]:
    """One summary row per (grid row, split, protocol), with the paper's number beside ours."""
    backbone = base.model.sam2.config
    key = f"{base.experiment}/{backbone}"
    out = []
    for result, row in zip(results, rows, strict=True):
        for n in result.get("numbers") or [{"split": sel.split, **result}]:
            paper = _paper(row, key, n["split"])
            j, f = n["J"], n["F"]
            out.append({
                "parent_run_id": parent_run_id, "row": row.name, "dataset": base.data.dataset, "split": n["split"],
                "protocol": n["protocol"], "J": j, "F": f, "J_and_F": (j + f) / 2, "S": _finite(n.get("S")),
                "paper_J": paper.get("J"), "paper_F": paper.get("F"), "paper_S": paper.get("S"),
                "paper_table": paper.get("table") or row.table,
            })
    return out


def _finite(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def summary_markdown(rows: list[dict[str, Any]], title: str) -> str:
    """The summary as a Markdown table; split/protocol/S columns only when the summary has several
    splits or protocols, or an S (so the AVSBench table reads as before)."""
    multi = len({(r["split"], r["protocol"]) for r in rows}) > len({r["row"] for r in rows}) or \
        any(r.get("S") is not None for r in rows)
    head = "| row | split | protocol | J | F | J&F | S |" if multi else "| row | J | F | J&F |"
    lines = [f"### {title}", "", head + " paper J | paper F | ΔJ vs paper | source |",
             "|" + "---|" * (head.count("|") - 1 + 4)]
    for r in rows:
        dj = None if r["paper_J"] is None or _finite(r["J"]) is None else r["J"] - r["paper_J"]
        ours = f"{_fmt(r['J'])} | {_fmt(r['F'])} | {_fmt(r['J_and_F'])}"
        if multi:
            paper_s = "" if r.get("paper_S") is None else f" (paper {_fmt(r['paper_S'])})"
            ours = f"{r['split']} | {r['protocol']} | {ours} | {_fmt(r.get('S'))}{paper_s}"
        lines.append(f"| {r['row']} | {ours} | {_fmt(r['paper_J'])} | {_fmt(r['paper_F'])} | {_fmt(dj)} | "
                     f"{r['paper_table']} |")
    return "\n".join(lines) + "\n"


def summary_png(rows: list[dict[str, Any]], out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    multi = len({(r["row"], r["split"], r["protocol"]) for r in rows}) > len({r["row"] for r in rows})
    names = [f"{r['row']}\n{r['split']} {r['protocol'].split('_')[0]}" if multi else r["row"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows)), 3.2), dpi=110)
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["J"] for r in rows], width=0.4, label="J (ours)")
    ax.bar([x + 0.2 for x in xs], [r["F"] for r in rows], width=0.4, label="F (ours)")
    for x, r in zip(xs, rows, strict=True):
        if r["paper_J"] is not None:
            ax.plot([x - 0.4, x], [r["paper_J"]] * 2, color="black", lw=1.5)
    ax.set_xticks(list(xs), names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


@flow(name="ablate")
def ablate_flow(config_yaml: str, grid: str = "paper", rows: list[str] | None = None,
                selection: dict[str, Any] | None = None, tracking: bool = True,
                row_workers: int = 1) -> dict[str, Any]:
    """Train and evaluate every row of a grid under one parent MLflow run; write the summary.

    `row_workers` > 1 trains that many rows at once: this process and `row_workers - 1` worker
    processes (Prefect's `ProcessPoolTaskRunner`), one torch thread per row, so a 2-core machine
    runs 2 rows in the time of ~1. Rows are independent (own run folder, own seed, own MLflow child
    run; MLflow's SQLite store waits on its lock), so results do not depend on the worker count.
    `selection`: a `SummarySelection`'s fields (`as_parameter`); default the config's."""
    from dashboards.schema import write_table
    from flows import tracking as mlf

    base = config_from_mapping(yaml.safe_load(config_yaml), "ablation base config")
    sel = SummarySelection.from_parameter(selection) or SummarySelection.default_for(base)
    grid_rows = [r for r in load_grid(grid, rows) if r.applies_to(base.data.dataset)]
    title = f"{base.experiment}: ablation grid {grid!r} ({', '.join(sel.split_list())}, {', '.join(sel.subsets) or 'all subsets'})"
    parent_name = f"ablate-{grid}-{config_hash(base)}"
    key = f"{parent_name}/{','.join(r.name for r in grid_rows)}/{sel}"
    parent_id = mlf.continue_or_start_run(base.experiment, parent_name, key,
                                          tags={"auralsam2.kind": "ablation", "grid": grid}, reuse_finished=True) \
        if tracking else f"local-{parent_name}"
    try:
        args = [(config_to_yaml(row_config(base, row)), row.name, parent_id if tracking else None, sel, tracking)
                for row in grid_rows]
        if row_workers > 1 and len(args) > 1:
            results = _rows_in_lanes(args, row_workers)
        else:
            results = [ablation_row_task(*a) for a in args]
        table = summary_rows(results, grid_rows, base, parent_id, sel)
        home = data_home()
        parquet = write_table(table, "ablation_summary", parent_id, home, "summary")
        folder = parquet.parent
        md = folder / "summary.md"
        atomic_write_text(md, summary_markdown(table, title))
        png = summary_png(table, folder / "summary.png", title)
        atomic_write_json(folder / "rows.json", results, sort_keys=False, default=str)
        if tracking:
            for path in (parquet, md, png):
                mlf.log_artifact(parent_id, path, "ablation", mlf.client())
            mlf.end_run(parent_id, "FINISHED")
    except BaseException as exc:
        if tracking:
            mlf.end_run_on(parent_id, exc)
        raise
    return {"parent_run_id": parent_id, "rows": table, "results": results, "markdown": md.read_text(),
            "summary": str(parquet), "png": str(png)}


@flow(name="ablate-rows")
def _parallel_rows(config_yamls: list[str], row_names: list[str], parent_run_id: str | None,
                   selection: dict[str, Any], tracking: bool, pool_lanes: int,
                   order: list[int] | None = None) -> list[dict[str, Any]]:
    """Rows on `pool_lanes + 1` lanes that take the next row (in `order`, default grid order) as they
    free up: `pool_lanes` threads that each hand their row to the flow's process pool, and this
    process, which trains rows itself (it is already warm, so the grid starts at once while the
    workers spawn and import). Results in grid order."""
    sel = SummarySelection(**selection)
    args = [(config_yaml, name, parent_run_id, sel, tracking)
            for config_yaml, name in zip(config_yamls, row_names, strict=True)]
    rows = list(range(len(args)) if order is None else order)
    results: list[dict[str, Any] | None] = [None] * len(args)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def next_row() -> int | None:
        with lock:
            return None if errors or not rows else rows.pop(0)

    def lane(run_row: Any, first: int | None = None) -> None:
        i = next_row() if first is None else first
        while i is not None:
            try:
                results[i] = run_row(i)
            except BaseException as exc:  # stop handing out rows; re-raised below
                with lock:
                    errors.append(exc)
            i = next_row()

    def in_pool(i: int) -> dict[str, Any]:
        return ablation_row_task.submit(*args[i]).result()

    def here(i: int) -> dict[str, Any]:
        threads = torch_threads()
        try:
            return ablation_row_task(*args[i])
        finally:  # training sets the process's torch threads: leave them as they were
            torch_threads(threads)

    # the threads carry this flow's context (its task runner), as Prefect's own thread runner does
    helpers = [threading.Thread(target=contextvars.copy_context().run, args=(lane, in_pool), daemon=True)
               for _ in range(pool_lanes)]
    mine = next_row()  # this process takes the grid's first row, the workers the next ones
    for t in helpers:
        t.start()
    lane(here, mine)
    for t in helpers:
        t.join()
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]  (every lane finished without error: all filled)


def torch_threads(n: int | None = None) -> int:
    """torch's intra-op thread count; sets it first when `n` is given."""
    import torch

    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def _rows_in_lanes(args: list[tuple], workers: int) -> list[dict[str, Any]]:
    """Run the rows on `workers` lanes, this process and `workers - 1` worker processes; results in
    grid order."""
    from prefect.task_runners import ProcessPoolTaskRunner

    configs = [config_from_mapping(yaml.safe_load(a[0]), a[1]) for a in args]
    todo = [cfg for cfg in configs if finished_run(cfg) is None]
    if len(todo) < 2:  # nothing to overlap: no pool to start
        return [ablation_row_task(*a) for a in args]
    pool = min(workers, len(todo)) - 1
    runner = ProcessPoolTaskRunner(max_workers=pool)
    _, _, parent_run_id, sel, tracking = args[0]  # the same for every row
    return _parallel_rows.with_options(task_runner=runner)(
        config_yamls=[a[0] for a in args], row_names=[a[1] for a in args], parent_run_id=parent_run_id,
        selection=sel.as_parameter(), tracking=tracking, pool_lanes=pool, order=costliest_first(configs))


def costliest_first(configs: Sequence[ExperimentConfig]) -> list[int]:
    """Row indices, the rows that cost more first (ties in grid order), so that the last row to
    start is a cheap one and the lanes end together: a mask-prompt warm-up costs most, then the
    audio path (the demo's AVSBench grid on 2 lanes: 227 s in grid order, 195 s so; BENCHMARKS.md)."""
    def cost(i: int) -> tuple[bool, bool]:
        cfg = configs[i]
        return cfg.warm_up_trains_the_map, cfg.model.fuser.uses_audio

    return sorted(range(len(configs)), key=cost, reverse=True)


def run_ablate(config_path: str | os.PathLike, overrides: Sequence[str] = (), *, grid: str = "paper",
               rows: Sequence[str] | None = None, selection: SummarySelection | None = None,
               tracking: bool = True, row_workers: int = 1) -> dict[str, Any]:
    from flows.preflight import preflight

    cfg = load_config(config_path, overrides)
    preflight(cfg, "ablate", steps=("train", "evaluate"), rows=row_configs(cfg, grid, rows))
    return ablate_flow(config_yaml=config_to_yaml(cfg), grid=grid, rows=list(rows) if rows else None,
                       selection=selection.as_parameter() if selection else None, tracking=tracking, row_workers=row_workers)
