"""The evaluate flow: checkpoint -> decode each split from the feature cache -> metrics, Parquet, MLflow.

    auralsam2 evaluate CHECKPOINT [--config CONFIG] [--split SPLIT ...] [--set key=value ...]

CHECKPOINT is our `best.ckpt` (its config travels inside it; `--config` may replace it) or a
released AuralSAM2 `.pth` (then `--config` names the dataset, cache and fuser). One Prefect task
per split. Each split is decoded in the three released modes from one forward per item and scored
under every configured protocol (`auralsam2.evaluation`); per-frame and per-clip rows stream into
`<data>/metrics/{frame,clip}_metrics/run_id=<id>/<split>__<decoding>__pNNNNN.parquet` (queryable
with `auralsam2 query`), the aggregates go to MLflow as `test/<split>/<protocol>/<decoding>/<metric>`,
with the per-clip Parquet and overlay PNGs of the best and worst clips as artifacts.

The MLflow run is the training run recorded in the checkpoint when it exists, else a new run
`eval-<checkpoint name>` in the config's experiment (released checkpoints).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from auralsam2.config import ExperimentConfig, config_from_mapping, config_to_yaml, load_config
from auralsam2.paths import data_home
from auralsam2.utils.devices import resolve_device
from auralsam2.utils.files import atomic_write_bytes

__all__ = ["checkpoint_config", "evaluate_flow", "evaluate_split", "run_evaluate"]


def checkpoint_config(checkpoint: str | os.PathLike, config: ExperimentConfig | None) -> tuple[ExperimentConfig, dict]:
    """(config to evaluate with, the checkpoint's `extra` metadata). Our checkpoints carry their
    config; a released one needs `config`."""
    import yaml

    from auralsam2.checkpoints import CheckpointError, load_fuser_checkpoint

    try:
        extra = load_fuser_checkpoint(checkpoint).extra
    except CheckpointError as err:
        if "load_released_fuser" not in str(err):
            raise
        if config is None:
            raise ValueError(f"{checkpoint} is a released AuralSAM2 checkpoint (no config inside): pass --config "
                             "with the dataset preset it was trained for") from None
        return config, {}
    if config is None:
        if "config_yaml" not in extra:
            raise ValueError(f"{checkpoint}: no config inside the checkpoint; pass --config")
        config = config_from_mapping(yaml.safe_load(extra["config_yaml"]), f"{checkpoint} (embedded config)")
    return config, dict(extra)


def _clear_split(home: Path, run_id: str, split: str) -> None:
    """Remove an earlier evaluation of this split for this run (parts are replaced, never mixed)."""
    from dashboards.schema import metrics_dir

    for table in ("frame_metrics", "clip_metrics"):
        for path in sorted((metrics_dir(home) / table / f"run_id={run_id}").glob(f"{split}__*.parquet*")):
            path.unlink()  # the Parquet file, then its .sha256


def clip_frames(reader, clip_key: str, size: int):
    """(T, size, size, 3) uint8 frames of a clip: from the raw dataset folder when it is still there,
    else from its ingest shard."""
    import io

    import numpy as np
    from PIL import Image

    record = reader.clip_record(clip_key)
    paths = [record.path(p) for p in record.frame_paths]
    if all(p.is_file() for p in paths):
        images = [Image.open(p).convert("RGB") for p in paths]
    else:
        from data_specs.shards import iter_shard

        shard = reader._clip_row(clip_key)["shard"]  # noqa: SLF001
        from feature_cache.build import read_cache_json

        ingest = Path(read_cache_json(reader.root)["ingest"])
        sample = next(s for s in iter_shard(ingest / "shards" / f"{shard}.tar", verify=False) if s.clip.key == clip_key)
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in sample.frames]
    return np.stack([np.asarray(im.resize((size, size), Image.BICUBIC)) for im in images])


def evaluate_split(checkpoint: str | os.PathLike, cfg: ExperimentConfig, split: str, run_id: str,
                   tracking: bool = True, prompts: Sequence[str] = ()) -> dict[str, Any]:
    """Evaluate one split (plain Python; the flow's task calls this). Returns the headline numbers,
    the flat metrics and the Parquet files written. `prompts`: also run the prompt-engineering
    protocol (`auralsam2.evaluation.prompts`) in these modes, for SAM2 alone and for AuralSAM2."""

    from auralsam2.engine import build_model, load_fuser_weights
    from auralsam2.evaluation import evaluate_source
    from dashboards.schema import write_table
    from feature_cache.dataset import eval_items, open_reader
    from flows import tracking as mlf

    home = data_home()
    device = str(resolve_device(cfg.train.device))
    reader = open_reader(cfg, device)
    model = build_model(cfg.model.model_copy(update={"init_checkpoint": None}), reader.model).to(device)
    load_report = load_fuser_weights(model, checkpoint)
    model.eval()
    source = eval_items(cfg, reader, split)
    _clear_split(home, run_id, split)
    parts: dict[str, int] = {}
    written: list[Path] = []
    headline = cfg.eval.headline_protocol
    scores: list[tuple[float, str]] = []

    def sink(decoding: str, frame_rows: list[dict], clip_rows: list[dict], tag: str = "") -> None:
        part = parts.get(decoding + tag, 0)
        parts[decoding + tag] = part + 1
        name = f"{split}__{decoding}{tag}__p{part:05d}"
        if frame_rows:
            written.append(write_table(frame_rows, "frame_metrics", run_id, home, name))
        if clip_rows:
            written.append(write_table(clip_rows, "clip_metrics", run_id, home, name))
        if decoding == cfg.eval.primary_decoding and not tag:
            scores.extend((r["J"], r["expression_uid"] or r["clip_key"]) for r in clip_rows
                          if r["protocol"] == headline and not r["is_null"])

    protocols = cfg.eval.protocols
    if cfg.task == "avs" and "refavs_official" in protocols:
        protocols = tuple(p for p in protocols if p != "refavs_official")
    if cfg.task == "ref" and "avsbench_official" in protocols:
        protocols = tuple(p for p in protocols if p != "avsbench_official")
    result = evaluate_source(model, source, split, task=cfg.task, protocols=protocols,
                             decodings=cfg.eval.decodings, cond_frame=cfg.eval.cond_frame,
                             precision=cfg.train.precision, rows_sink=sink, run_id=run_id,
                             avss_semantic=cfg.eval.avss_semantic and cfg.data.dataset == "avss",
                             progress=cfg.eval.progress, clips_per_batch=cfg.eval.clips_per_batch)
    flat = result.flat(prefix="test/")
    if math.isfinite(result.frames_per_s):
        flat[f"test/{split}/frames_per_s"] = result.frames_per_s
    prompt_rows = []
    if prompts:
        prompt_rows = _prompt_passes(model, source, cfg, split, run_id, protocols, prompts, sink, result)
        for row in prompt_rows:
            flat.update(row.pop("metrics"))
    if tracking:
        c = mlf.client()
        logger = mlf.MlflowLogger(run_id, c)
        logger.log_metrics(flat, step=0)
        logger.flush()
        for path in written:
            if path.parent.parent.name == "clip_metrics":
                mlf.log_artifact(run_id, path, f"metrics/clip_metrics/{split}", c)
        for kind, png in _overlays(model, source, reader, cfg, split, scores):
            out = home / "metrics" / "overlays" / run_id / split / kind
            atomic_write_bytes(out, png)
            mlf.log_artifact(run_id, out, f"overlays/{split}", c)
    return {"split": split, "n_items": result.n_items, "load": load_report,
            "J": result.value(headline, cfg.eval.primary_decoding, "J"),
            "F": result.value(headline, cfg.eval.primary_decoding, "F"),
            "S": result.value(headline, cfg.eval.primary_decoding, "S"),
            "by_protocol": {p: {m: result.value(p, cfg.eval.primary_decoding, m)
                                for m in ("J", "F", "S", "S_refavs_sqrt_per_call", "S_auralsam2_foreground_ratio")}
                            for p in protocols},
            "metrics": flat, "parquet": [str(p) for p in written], "prompts": prompt_rows,
            "protocol": headline, "decoding": cfg.eval.primary_decoding}


def _prompt_passes(model, source, cfg: ExperimentConfig, split: str, run_id: str, protocols, modes, sink,
                   audio_only) -> list[dict[str, Any]]:
    """Paper Tables 6-7: each prompt mode for SAM2 alone and for AuralSAM2 (one pass each, the
    primary decoding); rows {method, prompts, J, F, frames_per_s, n_unprompted, paper_*, metrics}."""
    from auralsam2.evaluation import METHODS, evaluate_source

    headline, decoding = cfg.eval.headline_protocol, cfg.eval.primary_decoding
    paper = paper_prompt_numbers()
    results = [("auralsam2", "none", audio_only)]
    for method in METHODS:
        for mode in modes:
            tag = f"__{method}-{mode.replace('+', '_')}"
            result = evaluate_source(model, source, split, task=cfg.task, protocols=protocols, decodings=[decoding],
                                     cond_frame=cfg.eval.cond_frame, precision=cfg.train.precision, run_id=run_id,
                                     rows_sink=lambda d, f, c, tag=tag: sink(d, f, c, tag), prompt_mode=mode,
                                     method=method, progress=cfg.eval.progress)
            results.append((method, mode, result))
    rows = []
    for method, mode, result in results:
        known = paper.get((method, mode), {})
        rows.append({"method": method, "prompts": mode, "J": result.value(headline, decoding, "J"),
                     "F": result.value(headline, decoding, "F"), "frames_per_s": result.frames_per_s,
                     "n_unprompted": result.n_unprompted, "paper_J": known.get("J"), "paper_F": known.get("F"),
                     "paper_fps": known.get("fps"), "paper_table": known.get("table"),
                     "metrics": {} if mode == "none" else _prompt_metrics(result, method, mode)})
    return rows


def _prompt_metrics(result, method: str, mode: str) -> dict[str, float]:
    prefix = f"prompts/{method}/{mode.replace('+', '_')}/test/"
    out = result.flat(prefix=prefix)
    if math.isfinite(result.frames_per_s):
        out[f"{prefix}{result.split}/frames_per_s"] = result.frames_per_s
    return out


PAPER_PROMPTS_FILE = Path(__file__).resolve().parents[1] / "configs" / "paper_prompts.yaml"


def paper_prompt_numbers(path: Path = PAPER_PROMPTS_FILE) -> dict[tuple[str, str], dict[str, Any]]:
    """The paper's Tables 6-7 (V1m, Hiera-B+) keyed by (method, prompts); empty when the file is absent."""
    import yaml

    if not path.is_file():
        return {}
    return {(r["method"], r["prompts"]): r for r in yaml.safe_load(path.read_text())["rows"]}


def _overlays(model, source, reader, cfg: ExperimentConfig, split: str, scores: list[tuple[float, str]]):
    """(file name, PNG) of the best and worst `eval.overlays` items by the headline J; each item is
    decoded again (cheap), so nothing is kept during the split."""
    from auralsam2.evaluation import cond_frame_for, predict_item
    from flows.tracking import overlay_png

    n = cfg.eval.overlays
    if not n or not scores:
        return
    ranked = sorted(scores)
    chosen = [("worst", i + 1, ranked[i]) for i in range(min(n, len(ranked)))]
    chosen += [("best", i + 1, ranked[-1 - i]) for i in range(min(n, len(ranked)))]
    index = {key: i for i, key in enumerate(source.item_keys())}
    for kind, rank, (j, key) in chosen:
        item = source.item(index[key])
        logits, _ = predict_item(model, item, cond_frame_for(cfg.task, item.n_frames, cfg.eval.cond_frame),
                                 [cfg.eval.primary_decoding], cfg.train.precision)
        size = item.masks.shape[-1]
        frames = clip_frames(reader, item.clip_key, size)
        pred = (logits[cfg.eval.primary_decoding] > 0).cpu().numpy()
        title = f"{kind} {rank}: {key}  J={j:.3f}  [{cfg.eval.headline_protocol}, {cfg.eval.primary_decoding}]"
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in key)
        yield f"{kind}_{rank}_{safe}.png", overlay_png(frames, item.masks.numpy(), pred, title)


def _evaluation_run(cfg: ExperimentConfig, checkpoint: str, extra: dict, run_id: str | None, tracking: bool) -> str:
    """The MLflow run to log into: given, the checkpoint's training run, or a new eval run."""
    if not tracking:
        return run_id or f"local-{Path(checkpoint).stem}"
    from feature_cache.dataset import open_reader
    from flows import tracking as mlf

    c = mlf.client()
    if run_id is None and extra.get("mlflow_run_id") and mlf.run_exists(extra["mlflow_run_id"], c):
        run_id = extra["mlflow_run_id"]
    if run_id is None:
        run_id = mlf.continue_or_start_run(cfg.experiment, f"eval-{Path(checkpoint).stem}", f"evaluate/{checkpoint}",
                                           mlflow_client=c,
                                           tags={"auralsam2.kind": "evaluate", "checkpoint": str(checkpoint)})
        reader = open_reader(cfg, "cpu")
        mlf.log_params(run_id, mlf.run_params(cfg, reader.info, reader.root), c)
    else:
        mlf.reopen_run(run_id, c)
    c.set_tag(run_id, "evaluated_checkpoint", str(checkpoint))
    return run_id


@task(name="evaluate-split", cache_policy=NO_CACHE)
def evaluate_split_task(checkpoint: str, config_yaml: str, split: str, run_id: str, tracking: bool,
                        prompts: list[str] | None = None) -> dict[str, Any]:
    """One split of one checkpoint (a split is one task)."""
    import yaml

    cfg = config_from_mapping(yaml.safe_load(config_yaml), "<evaluate flow config>")
    return evaluate_split(checkpoint, cfg, split, run_id, tracking, prompts or ())


@flow(name="evaluate")
def evaluate_flow(checkpoint: str, config_yaml: str | None = None, splits: list[str] | None = None,
                  run_id: str | None = None, tracking: bool = True, prompts: list[str] | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint on the configured (or given) splits; returns per-split summaries."""
    import yaml

    given = None if config_yaml is None else config_from_mapping(yaml.safe_load(config_yaml), "--config")
    cfg, extra = checkpoint_config(checkpoint, given)
    run_id = _evaluation_run(cfg, checkpoint, extra, run_id, tracking)
    try:
        results = {split: evaluate_split_task(checkpoint, config_to_yaml(cfg), split, run_id, tracking, prompts)
                   for split in (splits or list(cfg.eval.splits))}
    except BaseException as exc:
        if tracking:
            from flows.tracking import end_run_on

            end_run_on(run_id, exc)
        raise
    if tracking:
        from flows.tracking import end_run

        end_run(run_id, "FINISHED")
    return {"run_id": run_id, "checkpoint": str(checkpoint), "splits": results}


def run_evaluate(checkpoint: str | os.PathLike, config_path: str | os.PathLike | None = None,
                 overrides: Sequence[str] = (), *, config: ExperimentConfig | None = None,
                 splits: Sequence[str] | None = None, run_id: str | None = None, tracking: bool = True,
                 prompts: Sequence[str] = ()) -> dict[str, Any]:
    """Run the evaluate flow. `config_path`/`overrides` (or `config`) replace the checkpoint's config.
    `prompts`: prompt-engineering modes (points, box, points+box, mask) to run too."""
    if config is None and (config_path is not None or overrides):
        if config_path is None:
            cfg_ckpt, _ = checkpoint_config(checkpoint, None)
            import yaml

            from auralsam2.config import apply_overrides

            config = config_from_mapping(apply_overrides(yaml.safe_load(config_to_yaml(cfg_ckpt)), overrides))
        else:
            config = load_config(config_path, overrides)
    from feature_cache.dataset import open_reader
    from flows.preflight import preflight

    resolved, _ = checkpoint_config(checkpoint, config)  # fail fast, before the flow starts
    preflight(resolved, "evaluate", steps=("evaluate",), checkpoint=checkpoint)
    open_reader(resolved, "cpu")
    return evaluate_flow(checkpoint=str(Path(checkpoint).resolve()),
                         config_yaml=None if config is None else config_to_yaml(config),
                         splits=list(splits) if splits else None, run_id=run_id, tracking=tracking,
                         prompts=list(prompts) or None)
