"""Check before work: every file a command will need and the config's consistency, in seconds.

`run`, `train`, `evaluate`, `ablate` and `serve` call `preflight` before anything is ingested,
cached or trained: it collects EVERY problem (a missing SAM2 checkpoint, VGGish weights, text
encoder, raw tree, shards or cache; a text encoder whose width is not the fuser's; an ablation row
whose config is invalid) and raises one `PreflightError` that lists them all, each with how to
provide what is missing. Nothing here loads a model or reads a clip.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Sequence
from pathlib import Path

from auralsam2.config import ExperimentConfig, resolve_path
from auralsam2.paths import data_home

__all__ = ["PreflightError", "check", "preflight"]

STEPS = ("ingest", "cache", "train", "evaluate")


class PreflightError(ValueError):
    """What a command needs and does not have; the message lists every problem and its fix."""


def _model_files(cfg: ExperimentConfig) -> list[str]:
    from auralsam2.backbone import resolve_sam2_config

    problems = []
    sam2 = cfg.model.sam2
    try:
        resolve_sam2_config(sam2.config)
    except ValueError as err:
        problems.append(f"model.sam2.config: {err}")
    checks = [("model.sam2.checkpoint", sam2.checkpoint, "the official SAM2 checkpoint (e.g. sam2_hiera_large.pt "
               "from the SAM2 release) under checkpoints/, or --set model.sam2.checkpoint=PATH")]
    if cfg.model.fuser.uses_audio:
        checks.append(("model.vggish_checkpoint", cfg.model.vggish_checkpoint, "the torchvggish weights "
                       "vggish-10086976.pth, or --set model.vggish_checkpoint=null for a random VGGish"))
    checks.append(("model.init_checkpoint", cfg.model.init_checkpoint, "the fuser checkpoint to start from, or "
                   "--set model.init_checkpoint=null"))
    for field, value, fix in checks:
        if value and not resolve_path(value).is_file():
            problems.append(f"{field}: {resolve_path(value)} does not exist; provide {fix}")
    return problems


def _text_encoder(cfg: ExperimentConfig) -> list[str]:
    from auralsam2.text import locate_text_encoder

    name = cfg.model.text_encoder_source
    if cfg.data.dataset != "refavs" or not name:
        return []
    try:
        folder = locate_text_encoder(name)
    except FileNotFoundError as err:
        return [f"model.text_encoder: {err}"]
    try:
        hidden = json.loads((folder / "config.json").read_text()).get("hidden_size")
    except (OSError, ValueError) as err:
        return [f"model.text_encoder: {folder / 'config.json'} is unreadable ({err})"]
    if cfg.model.fuser.uses_text and hidden != cfg.model.fuser.text_dim:
        return [f"model.fuser.text_dim={cfg.model.fuser.text_dim} but the text encoder {name!r} has hidden size "
                f"{hidden}; set model.fuser.text_dim={hidden}"]
    return []


def _data(cfg: ExperimentConfig, steps: Collection[str], raw: str | os.PathLike | None) -> list[str]:
    from data_specs.ingest import find_index
    from feature_cache.build import read_cache_json

    home = data_home()
    ingest, cache = resolve_path(cfg.data.ingest, home), resolve_path(cfg.data.cache, home)
    info = None
    try:
        info = read_cache_json(cache)
    except Exception as err:  # noqa: BLE001 (an unreadable cache.json is reported, not raised)
        return [f"data.cache: {err}"]
    cache_complete = info is not None and info.get("status") == "complete"
    if raw is not None:
        try:
            find_index(cfg.data.dataset, raw)
        except (FileNotFoundError, ValueError) as err:
            return [f"--raw: {err}"]
        return []
    if "ingest" in steps and not cache_complete and not (ingest / "manifest.parquet").is_file():
        return [f"data.ingest: {ingest} holds no shards (manifest.parquet) and data.cache {cache} no complete "
                f"cache; give --raw RAW_DATASET_DIR to ingest the {cfg.data.dataset} release"]
    if "ingest" not in steps and not cache_complete:
        why = (f"{cache / 'cache.json'} is missing" if info is None
               else f"{cache / 'cache.json'} says its build is {info.get('status')!r}")
        return [f"data.cache: no complete feature cache at {cache} ({why}); build it with `auralsam2 run CONFIG --raw "
                f"RAW_DATASET_DIR` (ingest + cache) or `auralsam2 cache --shards {ingest} --out {cache} ...`"]
    return []


def _stale_text(cfg: ExperimentConfig, steps: Collection[str]) -> list[str]:
    """A cache that train/evaluate read as is must hold the configured encoder's text embeddings."""
    from feature_cache.build import read_cache_json, text_is_current

    if "cache" in steps or cfg.data.dataset != "refavs" or not cfg.model.text_encoder:
        return []
    info = read_cache_json(resolve_path(cfg.data.cache, data_home()))
    if info is None or text_is_current(info, cfg.model.text_encoder_source):
        return []
    return [f"data.cache: its text embeddings were not built with model.text_encoder={cfg.model.text_encoder!r}; "
            "rebuild them with `auralsam2 run CONFIG` (the SAM2 features are reused)"]


def check(cfg: ExperimentConfig, *, steps: Collection[str] = STEPS, raw: str | os.PathLike | None = None,
          checkpoint: str | os.PathLike | None = None, rows: Sequence[ExperimentConfig | str] = ()) -> list[str]:
    """Every problem that would stop `steps` of `cfg` (with `raw` to ingest, a `checkpoint` to
    evaluate, and the ablation rows' configs, given as configs or as their error messages)."""
    problems = _model_files(cfg) + _text_encoder(cfg)
    problems += [row for row in rows if isinstance(row, str)]
    if checkpoint is not None and not Path(checkpoint).is_file():
        problems.append(f"checkpoint {checkpoint}: no such file (give a run's best.ckpt or a released .pth)")
    data = _data(cfg, steps, raw)
    problems += data or (_stale_text(cfg, steps) if not problems else [])
    return problems


def preflight(cfg: ExperimentConfig, command: str, **kwargs) -> None:
    """`check`, raising one `PreflightError` naming the command and listing every problem."""
    problems = check(cfg, **kwargs)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise PreflightError(f"`auralsam2 {command}` cannot run {cfg.experiment!r}; nothing was started. "
                             f"{len(problems)} problem(s):\n{lines}")
