"""Column layouts of the metrics tables, and the one writer every producer uses.

Tables live under `<data>/metrics/<table>/<partition>=<value>/<name>.parquet` (hive layout), so
DuckDB exposes the partition (`run_id` or `parent_run_id`) as a column and a new run never rewrites
an old one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from auralsam2.utils.files import DamagedFileError, atomic_write_parquet, atomic_write_text
from auralsam2.utils.hashing import sha256_file

_ID_COLUMNS = [
    ("run_id", pa.string()), ("dataset", pa.string()), ("subset", pa.string()), ("split", pa.string()),
    ("clip_key", pa.string()), ("expression_uid", pa.string()),
]
_TAIL = [
    ("protocol", pa.string()), ("decoding", pa.string()),
    ("prompts", pa.string()),  # SAM2 prompts from the GT on the conditioning frame: none, points, box, points+box, mask
    ("method", pa.string()),   # auralsam2 (the fuser's prompts) or sam2 (SAM2 alone, no fuser)
    ("J", pa.float64()), ("F", pa.float64()),
    ("pred_area", pa.int64()), ("gt_area", pa.int64()), ("pixels", pa.int64()), ("object_score", pa.float64()),
    ("category", pa.string()), ("is_null", pa.bool_()),
]

FRAME_METRICS = pa.schema([*_ID_COLUMNS, ("frame", pa.int32()), *_TAIL, ("labelled", pa.bool_())])
CLIP_METRICS = pa.schema([*_ID_COLUMNS, ("n_frames", pa.int32()), *_TAIL])
ABLATION_SUMMARY = pa.schema([
    ("parent_run_id", pa.string()), ("row", pa.string()), ("dataset", pa.string()), ("split", pa.string()),
    ("protocol", pa.string()), ("J", pa.float64()), ("F", pa.float64()), ("J_and_F", pa.float64()),
    ("S", pa.float64()),  # Ref-AVS null split: the protocol's S (refavs_official: mean sqrt per call;
                          # auralsam2_released: global foreground ratio); null elsewhere
    ("paper_J", pa.float64()), ("paper_F", pa.float64()), ("paper_S", pa.float64()), ("paper_table", pa.string()),
])

TABLES: dict[str, tuple[pa.Schema, str]] = {
    "frame_metrics": (FRAME_METRICS, "run_id"),
    "clip_metrics": (CLIP_METRICS, "run_id"),
    "ablation_summary": (ABLATION_SUMMARY, "parent_run_id"),
}

_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def metrics_dir(data_home: str | Path) -> Path:
    return Path(data_home) / "metrics"


def write_table(rows: list[dict[str, Any]] | pa.Table, table: str, partition_value: str, data_home: str | Path,
                name: str = "part-0") -> Path:
    """Write rows of `table` for one run (or parent run) atomically; returns the Parquet path.

    Rows must carry every column of the table's schema (extra keys are an error, so a typo never
    silently drops a field). Re-writing the same (partition, name) replaces that file only.
    """
    schema, partition = TABLES[table]
    if isinstance(rows, pa.Table):
        data = rows.select(schema.names).cast(schema)
    else:
        for i, row in enumerate(rows):
            unknown = set(row) - set(schema.names)
            missing = set(schema.names) - set(row)
            if unknown or missing:
                raise ValueError(f"{table} row {i}: unknown columns {sorted(unknown)}, missing {sorted(missing)}")
        data = pa.Table.from_pylist(rows, schema=schema)
    folder = metrics_dir(data_home) / table / f"{partition}={_SAFE.sub('_', partition_value)}"
    path = atomic_write_parquet(folder / f"{_SAFE.sub('_', name)}.parquet", data)
    atomic_write_text(checksum_path(path), f"{sha256_file(path)}  {path.name}\n")  # `sha256sum -c` reads it too
    return path


def checksum_path(parquet: Path) -> Path:
    return parquet.with_name(parquet.name + ".sha256")


def check_table_file(parquet: Path) -> None:
    """Raise `DamagedFileError` unless `parquet` matches the sha256 `write_table` recorded beside it."""
    side = checksum_path(parquet)
    fix = "re-run the `auralsam2 evaluate` / `ablate` that wrote it (or delete the file and its .sha256)"
    if not parquet.is_file():
        raise DamagedFileError(f"{parquet}: missing (its checksum file {side.name} is there); {fix}")
    if not side.is_file():
        raise DamagedFileError(f"{parquet}: no checksum file {side.name} (it was deleted, or the file was not written "
                               f"by auralsam2); {fix}")
    text = side.read_text(errors="replace").split()
    if not text or text[0] != sha256_file(parquet):
        raise DamagedFileError(f"{parquet}: fails its checksum ({side.name}): the file or its checksum is damaged; {fix}")


def table_files(data_home: str | Path, table: str) -> list[Path]:
    """The Parquet files of one metrics table, each checked against its sha256 (`check_table_file`)."""
    root = metrics_dir(data_home) / table
    if not root.is_dir():
        return []
    files = set(root.glob("*/*.parquet")) | {p.with_name(p.name.removesuffix(".sha256")) for p in root.glob("*/*.sha256")}
    for path in sorted(files):
        check_table_file(path)
    return sorted(files)
