"""Canned queries over the DuckDB views (`dashboards.views.connect`).

Each is plain SQL with named `$parameters`; `auralsam2 query NAME [--param k=v]` runs one, and
`auralsam2 query "select ..."` runs any SQL over the same views.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CannedQuery:
    name: str
    description: str
    sql: str
    params: dict[str, str]  # name -> default value ("" means required)


CANNED: dict[str, CannedQuery] = {q.name: q for q in [
    CannedQuery(
        "per_category_j",
        "Mean J and F per category (AVS: the clip's audible objects; Ref-AVS: the referred category), per run and protocol.",
        """
        select run_id, protocol, decoding, category, count(*) as clips, avg(J) as J, avg(F) as F
        from clip_metrics
        where not is_null and ($run_id = '' or run_id = $run_id)
        group by all order by run_id, protocol, decoding, J
        """,
        {"run_id": ""},
    ),
    CannedQuery(
        "worst_clips",
        "The clips (or expressions) with the lowest J, with their areas: where to look first.",
        """
        select run_id, protocol, decoding, dataset, split, clip_key, expression_uid, category, J, F,
               pred_area, gt_area
        from clip_metrics
        where not is_null and ($run_id = '' or run_id = $run_id)
        order by J asc, clip_key limit cast($limit as integer)
        """,
        {"run_id": "", "limit": "20"},
    ),
    CannedQuery(
        "null_set_s",
        "Ref-AVS null split: the released AuralSAM2 foreground ratio (sum of predicted pixels / all pixels, "
        "exact) and the mean per-frame sqrt ratio (a diagnostic close to, not equal to, the official "
        "40-frame-batch S, which the evaluator logs to MLflow as the exact number).",
        """
        select run_id, protocol, decoding, count(*) as frames,
               sum(pred_area)::double / sum(pixels) as foreground_ratio_released,
               avg(sqrt(pred_area::double / pixels)) as mean_frame_sqrt_ratio
        from frame_metrics
        where is_null and ($run_id = '' or run_id = $run_id)
        group by all order by run_id, protocol, decoding
        """,
        {"run_id": ""},
    ),
    CannedQuery(
        "compare_runs",
        "Run A vs run B per protocol and decoding: J, F and the difference (B - A), over the clips both evaluated.",
        """
        with a as (select * from clip_metrics where run_id = $a and not is_null),
             b as (select * from clip_metrics where run_id = $b and not is_null)
        select a.protocol, a.decoding, a.split, count(*) as clips,
               avg(a.J) as J_a, avg(b.J) as J_b, avg(b.J) - avg(a.J) as dJ,
               avg(a.F) as F_a, avg(b.F) as F_b, avg(b.F) - avg(a.F) as dF
        from a join b using (clip_key, expression_uid, protocol, decoding, split)
        group by all order by a.protocol, a.decoding, a.split
        """,
        {"a": "", "b": ""},
    ),
    CannedQuery(
        "runs_overview",
        "Every run with its parent, status and the metrics it logged.",
        "select * from runs order by start_time desc",
        {},
    ),
    CannedQuery(
        "ablations",
        "Every ablation grid's summary: our J/F/J&F next to the paper's number for the same setting.",
        """
        select parent_run_id, row, dataset, split, protocol, J, F, J_and_F, paper_J, paper_F,
               J - paper_J as dJ_vs_paper
        from ablation_summary order by parent_run_id, row
        """,
        {},
    ),
]}


def resolve(name: str, overrides: dict[str, str]) -> tuple[str, dict[str, str]]:
    """SQL and parameter values for a canned query; unknown or missing parameters are errors."""
    query = CANNED[name]
    unknown = set(overrides) - set(query.params)
    if unknown:
        raise ValueError(f"query {name!r} has no parameter(s) {sorted(unknown)}; it takes {sorted(query.params)}")
    values = {**query.params, **overrides}
    missing = [k for k, v in values.items() if v == "" and k in ("a", "b")]
    if missing:
        raise ValueError(f"query {name!r} needs --param {'=... --param '.join(missing)}=...")
    return query.sql, values
