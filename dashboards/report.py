"""The static HTML report: `index.html` and `assets/` (Plotly's JavaScript, overlay thumbnails), opened
from disk without a server.

Everything comes from the DuckDB views (`dashboards.views`) plus what the caller collects from the
MLflow store and the data folder (`ReportInputs`: training curves, ingest and cache summaries; the
`flows.report` command gathers them, since `dashboards` never imports MLflow). Sections: the ablation
grid per dataset with the paper's numbers, the metrics per split and protocol, training curves, runs
compared across experiments, prompt engineering (paper Tables 6-7), the best and worst clips with
their overlays, and the ingest and feature-cache summaries.
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dashboards import charts
from dashboards.schema import metrics_dir
from dashboards.views import connect

TEMPLATES = Path(__file__).resolve().parent / "templates"
HEADLINE = {"avss": ("test", "avsbench_official"), "refavs": ("test_s", "refavs_official")}
PRIMARY_DECODING = "iou_select"
CLIPS_SHOWN = 3  # best and worst clips per run

__all__ = ["ReportInputs", "check_report_folder", "write_report"]


@dataclass
class ReportInputs:
    """What the report needs beyond DuckDB. `curves[run_id][metric] = [(step, value), ...]`;
    `ingests`/`caches`: one dict per ingest folder / feature cache (see `flows.report`);
    `paper_prompts[(method, prompts)] = {J, F, fps, table}`; `paper_reference[(dataset, row, split)]`
    (split "*": any) = the paper's {J, F, S, table} for a grid row in the paper's own setting, shown
    (labelled) where a grid ran in a setting the paper has no number for."""

    data_home: Path
    curves: dict[str, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)
    ingests: list[dict[str, Any]] = field(default_factory=list)
    caches: list[dict[str, Any]] = field(default_factory=list)
    paper_prompts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    paper_reference: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)


def _rows(con, sql: str, params: list | None = None) -> list[dict[str, Any]]:
    cursor = con.execute(sql, params or [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _runs(con) -> dict[str, dict[str, Any]]:
    """run_id -> the run's row of the `runs` view (name, experiment, status, times, metrics.*)."""
    out = {}
    for row in _rows(con, "select * from runs"):
        out[row["run_id"]] = {k: _clean(v) for k, v in row.items()}
    return out


def _label(run: dict[str, Any] | None, run_id: str) -> str:
    if not run:
        return run_id[:8]
    return f"{run.get('experiment') or '?'}/{run.get('run_name') or run_id[:8]}"


def _with_reference(r: dict[str, Any], reference: dict[tuple[str, str, str], dict[str, Any]]) -> dict[str, Any]:
    """A summary row; without the paper's number for its own setting, the paper's for the row in the
    paper's setting (`paper_setting` says which)."""
    r = {k: _clean(v) for k, v in r.items()}
    r["paper_setting"] = "same setting" if r.get("paper_J") is not None or r.get("paper_S") is not None else ""
    if not r["paper_setting"]:
        known = reference.get((r["dataset"], r["row"], r["split"])) or reference.get((r["dataset"], r["row"], "*"))
        if known:
            r.update(paper_J=known.get("J"), paper_F=known.get("F"), paper_S=known.get("S"),
                     paper_table=known["table"], paper_setting="paper's setting")
    return r


def _ablation(con, runs: dict[str, dict[str, Any]], reference) -> list[dict[str, Any]]:
    """One block per (dataset, grid run): the summary rows, the paper's beside them, and a chart."""
    rows = _rows(con, "select * from ablation_summary order by dataset, parent_run_id, row, split, protocol")
    blocks: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        blocks.setdefault((r["dataset"], r["parent_run_id"]), []).append(_with_reference(r, reference))
    out = []
    for i, ((dataset, parent), items) in enumerate(blocks.items()):
        split, protocol = HEADLINE.get(dataset, (None, None))
        chart_rows = [r for r in items if r["protocol"] == (protocol or r["protocol"]) and r["J"] is not None]
        run = runs.get(parent, {})
        out.append({"dataset": dataset, "parent": parent, "label": _label(run, parent),
                    "start": run.get("start_time"), "rows": items,
                    "chart": charts.ablation_chart(chart_rows, f"ablation-{i}",
                                                   f"{dataset}: ablation grid, {protocol or 'all protocols'}")})
    return sorted(out, key=lambda b: (b["dataset"], str(b["start"] or "")), reverse=False)


_TEST_METRIC = re.compile(r"^metrics\.test/(?P<split>[^/]+)/(?P<protocol>[^/]+)/(?P<decoding>[^/]+)/(?P<metric>J|F|S)$")


def _split_metrics(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The logged test numbers (exactly as MLflow has them) per run, split and protocol, primary decoding."""
    out = []
    for run_id, run in runs.items():
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for name, value in run.items():
            m = _TEST_METRIC.match(name)
            if m and m["decoding"] == PRIMARY_DECODING and value is not None:
                found.setdefault((m["split"], m["protocol"]), {})[m["metric"]] = value
        for (split, protocol), values in sorted(found.items()):
            out.append({"run": _label(run, run_id), "run_id": run_id, "split": split, "protocol": protocol,
                        "J": values.get("J"), "F": values.get("F"), "S": values.get("S")})
    return sorted(out, key=lambda r: (r["run"], r["split"], r["protocol"]))


def _compare(split_rows: list[dict[str, Any]], runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run's headline number (AVSBench official on test, Ref-AVS official on test_s)."""
    headline = set(HEADLINE.values())
    out = []
    for r in split_rows:
        if (r["split"], r["protocol"]) in headline:
            run = runs.get(r["run_id"], {})
            out.append({**r, "experiment": run.get("experiment") or "?", "label": r["run"],
                        "status": run.get("status"), "start": run.get("start_time")})
    return out


def _prompts(con, paper: dict[tuple[str, str], dict[str, Any]], runs) -> list[dict[str, Any]]:
    rows = _rows(con, f"""
        select run_id, split, method, prompts, count(*) as clips, avg(J) as J, avg(F) as F
        from clip_metrics
        where not is_null and decoding = '{PRIMARY_DECODING}'
          and protocol in ('avsbench_official', 'refavs_official')
          and run_id in (select distinct run_id from clip_metrics where method = 'sam2')
        group by all order by run_id, split, method desc, prompts""")
    for r in rows:
        known = paper.get((r["method"], r["prompts"]), {})
        r.update(run=_label(runs.get(r["run_id"]), r["run_id"]), paper_J=known.get("J"), paper_F=known.get("F"),
                 paper_table=known.get("table"))
    return rows


def _clips(con, runs, home: Path, assets: Path) -> list[dict[str, Any]]:
    """Per evaluated run: its best and worst clips by the headline J, with the overlay thumbnails
    `evaluate` wrote (frame | ground truth | prediction), copied into the report's assets."""
    out = []
    evaluated = _rows(con, f"""
        select run_id, split, protocol, count(*) as n from clip_metrics
        where not is_null and decoding = '{PRIMARY_DECODING}' and coalesce(prompts, 'none') = 'none'
          and (split, protocol) in (('test', 'avsbench_official'), ('test_s', 'refavs_official'))
        group by all order by run_id, split""")
    for e in evaluated:
        items = _rows(con, f"""
            select clip_key, expression_uid, category, J, F from clip_metrics
            where run_id = ? and split = ? and protocol = ? and decoding = '{PRIMARY_DECODING}'
              and not is_null and coalesce(prompts, 'none') = 'none' order by J, clip_key""",
                      [e["run_id"], e["split"], e["protocol"]])
        overlays = home / "metrics" / "overlays" / e["run_id"] / e["split"]
        pngs = {p.name: p for p in overlays.glob("*.png")} if overlays.is_dir() else {}
        chosen = [("worst", i + 1, r) for i, r in enumerate(items[:CLIPS_SHOWN])]
        chosen += [("best", i + 1, r) for i, r in enumerate(reversed(items[-CLIPS_SHOWN:]))]
        shown = []
        for kind, rank, r in chosen:
            key = r["expression_uid"] or r["clip_key"]
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in key)
            image = None
            if f"{kind}_{rank}_{safe}.png" in pngs:
                target = assets / "overlays" / e["run_id"] / e["split"] / f"{kind}_{rank}_{safe}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(pngs[f"{kind}_{rank}_{safe}.png"], target)
                image = target.relative_to(assets.parent).as_posix()
            shown.append({"kind": kind, "rank": rank, "key": key, "category": r["category"],
                          "J": _clean(r["J"]), "F": _clean(r["F"]), "image": image})
        out.append({"run": _label(runs.get(e["run_id"]), e["run_id"]), "run_id": e["run_id"], "split": e["split"],
                    "protocol": e["protocol"], "n": e["n"], "clips": shown})
    return out


def _curve_charts(curves, runs) -> list[str]:
    names = {run_id: _label(runs.get(run_id), run_id) for run_id in curves}
    made = [charts.curves_chart(curves, "train/total", "curve-train", "training loss (train/total)", names),
            charts.curves_chart(curves, "select/J", "curve-select", "model selection J (val)", names)]
    return [c for c in made if c]


def write_report(inputs: ReportInputs, out: str | Path) -> Path:
    """Render the report into `out`; returns the path of `index.html`. `out` must be new, empty or an
    earlier report (`auralsam2.utils.outputs`): written to a staging folder, then swapped in."""
    from auralsam2.utils.files import with_filename
    from auralsam2.utils.outputs import output_path, owned_output_folder

    with owned_output_folder(out, "report", protect=(Path(inputs.data_home),),
                             written_before=_earlier_report) as stage:
        try:
            _render(inputs, stage)
        except BaseException as exc:
            named = with_filename(exc, stage)  # a full disk names the report folder
            if named is not exc:
                raise named from exc
            raise
    return output_path(out) / "index.html"


def check_report_folder(out: str | Path, data_home: Path) -> Path:
    """`OutputFolderError` unless `out` may take a report (new, empty, or an earlier report)."""
    from auralsam2.utils.outputs import check_output_folder

    return check_output_folder(out, "report", protect=(Path(data_home),), written_before=_earlier_report)


def _earlier_report(folder: Path) -> bool:
    """A report written before output folders were marked: its own page and Plotly, nothing else."""
    index = folder / "index.html"
    try:
        head = index.read_text(encoding="utf-8", errors="replace")[:400]
    except OSError:
        return False
    names = {p.name for p in folder.iterdir()}
    return "<title>AuralSAM2 pipeline report</title>" in head and names <= {"index.html", "assets"}


def _render(inputs: ReportInputs, tmp: Path) -> None:
    import jinja2
    import plotly.offline

    assets = tmp / "assets"
    assets.mkdir(parents=True)
    (assets / "plotly.min.js").write_text(plotly.offline.get_plotlyjs(), encoding="utf-8")
    home = Path(inputs.data_home)
    con = connect(home)
    runs = _runs(con)
    split_rows = _split_metrics(runs)
    compare = _compare(split_rows, runs)
    prompts = _prompts(con, inputs.paper_prompts, runs)
    context = {
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "home": str(home),
        "metrics_dir": str(metrics_dir(home)), "n_runs": len(runs),
        "ablation": _ablation(con, runs, inputs.paper_reference), "split_metrics": split_rows,
        "curves": _curve_charts(inputs.curves, runs),
        "compare": compare, "compare_chart": charts.runs_chart(compare, "compare", "headline J per run"),
        "prompts": prompts, "prompts_chart": charts.prompts_chart(prompts, "prompts", "prompt engineering"),
        "clips": _clips(con, runs, home, assets), "ingests": inputs.ingests, "caches": inputs.caches,
    }
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["num"] = lambda v, d=3: "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) \
        else f"{v:.{d}f}"
    env.filters["size"] = _size
    html = env.get_template("report.html.j2").render(**context)
    (tmp / "index.html").write_text(html, encoding="utf-8")


def _size(n: int | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
