"""Ingest as plain functions: read a raw tree, plan shards, and write the manifest and report.

`flows/ingest.py` runs these as a Prefect flow (one task per shard); nothing here imports Prefect.
Outputs under the ingest folder DIR:

    DIR/shards/<dataset>-<subset>-<split>-NNNNNN.tar (+ .json sidecar)
    DIR/manifest.parquet        one row per kept clip
    DIR/ingest_report.parquet   one row per finding
    DIR/ingest.json             what was ingested from where, and the counts
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa

from auralsam2.utils.files import DamagedFileError, atomic_write_json, atomic_write_parquet, read_json
from auralsam2.utils.hashing import sha256_file
from auralsam2.utils.outputs import check_output_folder, claim_output_folder
from data_specs.avsbench_v1 import read_ms3, read_s4
from data_specs.avss import read_avss
from data_specs.clip import Clip, Finding
from data_specs.common import ReadResult, partition_clips
from data_specs.refavs import read_refavs
from data_specs.shards import MANIFEST_COLUMNS, ShardPlan, ShardResult, plan_shards

READERS: dict[str, Callable[..., ReadResult]] = {
    "avss": read_avss,
    "avsbench-s4": read_s4,
    "avsbench-ms3": read_ms3,
    "refavs": read_refavs,
}
PALETTE_MASKS = {"avss"}  # datasets whose masks are RGB palette images


def find_index(dataset: str, root: str | Path) -> Path:
    """The metadata file a raw `dataset` folder must hold (cheap: no clip is read); a missing one is
    a `FileNotFoundError` saying where to point --root."""
    from data_specs.avsbench_v1 import _locate
    from data_specs.avss import find_metadata

    root = Path(root).resolve()
    if dataset == "avss":
        return find_metadata(root)
    if dataset == "refavs":
        if not (root / "metadata.csv").is_file():
            raise FileNotFoundError(f"{root / 'metadata.csv'} not found; point --root at the REFAVS folder "
                                    "(metadata.csv, media/, gt_mask/)")
        return root / "metadata.csv"
    if dataset in ("avsbench-s4", "avsbench-ms3"):
        s4 = dataset == "avsbench-s4"
        return _locate(root, "s4_meta_data.csv" if s4 else "ms3_meta_data.csv", "Single-source" if s4 else "Multi-sources")
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(READERS)}")
REPORT_COLUMNS = ("dataset", "clip_key", "file", "kind", "severity", "message", "expression_uid")


@dataclass
class IngestPlan:
    dataset: str
    subset: str
    root: str
    out: str
    read: ReadResult
    quarantined: list[Clip]
    shards: list[ShardPlan]


@dataclass
class IngestSummary:
    dataset: str
    subset: str
    root: str
    out: str
    clips_read: int
    clips_kept: int
    clips_quarantined: int
    expressions_read: int
    expressions_kept: int
    rows_skipped: int
    shards: int
    shards_written: int
    shards_skipped: int
    bytes: int
    errors: int
    warnings: int
    findings_by_kind: dict[str, int] = field(default_factory=dict)
    manifest: str = ""
    manifest_sha256: str = ""  # readers check the manifest against it (`read_manifest`)
    report_sha256: str = ""    # and the report (`read_ingest_report`)
    report: str = ""
    shards_dir: str = ""

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.findings_by_kind.items())) or "none"
        out = [
            f"ingest {self.dataset} ({self.subset}) from {self.root}",
            f"  clips: {self.clips_read} read = {self.clips_kept} kept + {self.clips_quarantined} quarantined",
        ]
        if self.expressions_read:
            out.append(f"  expressions: {self.expressions_read} read, {self.expressions_kept} kept")
        if self.rows_skipped:
            out.append(f"  metadata rows skipped: {self.rows_skipped}")
        out += [
            f"  shards: {self.shards} ({self.shards_written} written, {self.shards_skipped} already complete), "
            f"{self.bytes / 1e6:.1f} MB",
            f"  findings: {self.errors} errors, {self.warnings} warnings ({kinds})",
            f"  shards:   {self.shards_dir}",
            f"  manifest: {self.manifest}",
            f"  report:   {self.report}",
        ]
        return out


def prepare(dataset: str, root: str | Path, out: str | Path, subset: str = "all", strict: bool = False,
            clips_per_shard: int = 64, force: bool = False, follow_symlinks: bool = False) -> IngestPlan:
    """Read and check the metadata and folders, and plan the shards (no file bytes read yet).
    `force`: replace an ingest of another raw root (or dataset) in `out` instead of refusing.
    `follow_symlinks`: read clip folders and files that are symlinks out of the raw tree (by default
    they are `unsafe_path` findings and their clips are quarantined)."""
    if dataset not in READERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(READERS)}")
    out = check_ingest_folder(out).resolve()
    _claim(out, dataset, subset, Path(root).resolve(), force)
    read = READERS[dataset](root, subset=subset, strict=strict, follow_symlinks=follow_symlinks)
    kept, quarantined = partition_clips(read.clips, read.findings)
    shards = plan_shards(kept, read.findings, clips_per_shard, follow_symlinks)
    return IngestPlan(dataset, subset, read.root, str(out), read, quarantined, shards)


CLAIM = ".claim.json"  # written before the first shard: which ingest owns the folder, finished or not


def _earlier_ingest(folder: Path) -> bool:
    return (folder / CLAIM).is_file() or (folder / "ingest.json").is_file()


def check_ingest_folder(out: str | Path) -> Path:
    """The absolute ingest folder `out`, when it is new, empty or an ingest's (else `OutputFolderError`)."""
    return check_output_folder(out, "ingest", written_before=_earlier_ingest, follow_symlink=True)


def _claim(out: Path, dataset: str, subset: str, root: Path, force: bool = False) -> None:
    """One ingest folder holds one ingest: (dataset, subset) from one raw root. Another one is refused
    (its shards would be replaced) unless `force`, which first removes the old ingest's files."""
    mine = {"dataset": dataset, "subset": subset, "root": str(root)}
    records = [r for r in (out / "ingest.json", out / CLAIM) if r.is_file()]
    readable = {}
    for record in records:
        try:
            readable[record] = read_json(record, "the ingest record", "")
        except DamagedFileError:
            pass  # the other record decides; both damaged is an error below
    if records and not readable and not force:
        raise DamagedFileError(f"{records[0]}: damaged, so which raw root {out} holds is unknown; re-run with "
                               "`auralsam2 ingest ... --force` to rewrite this ingest folder")
    for previous in readable.values():
        theirs = {k: previous.get(k) for k in mine}
        if theirs != mine and not force:
            raise ValueError(
                f"{out} already holds an ingest of {theirs['dataset']} ({theirs['subset']}) from {theirs['root']}; "
                f"ingesting {dataset} ({subset}) from {root} there would replace its shards: use another --out (data.ingest "
                "for `auralsam2 run`), or `auralsam2 ingest ... --force` to replace it")
        if theirs != mine:
            _remove_ingest(out)
            break
    claim_output_folder(out, "ingest", written_before=_earlier_ingest)
    atomic_write_json(out / CLAIM, mine)
    for stale in (out / "shards").glob(".*.tmp-*") if (out / "shards").is_dir() else []:
        stale.unlink()  # left by an interrupted run


def _remove_ingest(out: Path) -> None:
    import shutil

    shutil.rmtree(out / "shards", ignore_errors=True)
    for name in ("manifest.parquet", "ingest_report.parquet", "ingest.json", CLAIM):
        (out / name).unlink(missing_ok=True)


def finalize(plan: IngestPlan, results: list[ShardResult]) -> IngestSummary:
    """Write manifest, report and summary for a finished set of shards; drop stale shards."""
    out = Path(plan.out)
    rows = [row for r in sorted(results, key=lambda r: r.name) for row in r.rows]
    findings: list[Finding] = list(plan.read.findings) + [f for r in results for f in r.findings]
    manifest = pa.Table.from_pylist(rows, schema=pa.schema([
        ("key", pa.string()), ("dataset", pa.string()), ("subset", pa.string()), ("split", pa.string()),
        ("uid", pa.string()), ("category", pa.string()), ("n_frames", pa.int32()), ("n_labelled_frames", pa.int32()),
        ("n_expressions", pa.int32()), ("shard", pa.string()), ("bytes", pa.int64()), ("content_hash", pa.string()),
    ]))
    assert tuple(manifest.column_names) == MANIFEST_COLUMNS
    report = pa.Table.from_pylist([asdict(f) for f in findings],
                                  schema=pa.schema([(c, pa.string()) for c in REPORT_COLUMNS]))
    atomic_write_parquet(out / "manifest.parquet", manifest)
    atomic_write_parquet(out / "ingest_report.parquet", report)

    planned = {f"{p.name}.tar" for p in plan.shards}
    for tar in (out / "shards").glob("*.tar"):
        if tar.name not in planned:
            tar.unlink()
            tar.with_suffix(".json").unlink(missing_ok=True)

    deep_quarantined = sum(len(r.quarantined) for r in results)
    expressions_read = sum(len(c.expressions) for c in plan.read.clips)
    kinds = Counter(f.kind for f in findings)
    summary = IngestSummary(
        dataset=plan.dataset, subset=plan.subset, root=plan.root, out=plan.out,
        clips_read=len(plan.read.clips), clips_kept=len(rows),
        clips_quarantined=len(plan.quarantined) + deep_quarantined,
        expressions_read=expressions_read, expressions_kept=sum(r["n_expressions"] for r in rows),
        rows_skipped=plan.read.rows_skipped, shards=len(results),
        shards_written=sum(not r.skipped for r in results), shards_skipped=sum(r.skipped for r in results),
        bytes=sum(r.bytes for r in results),
        errors=sum(f.severity == "error" for f in findings), warnings=sum(f.severity == "warning" for f in findings),
        findings_by_kind=dict(kinds), manifest=str(out / "manifest.parquet"),
        manifest_sha256=sha256_file(out / "manifest.parquet"),
        report=str(out / "ingest_report.parquet"), report_sha256=sha256_file(out / "ingest_report.parquet"),
        shards_dir=str(out / "shards"),
    )
    if summary.clips_read != summary.clips_kept + summary.clips_quarantined:
        raise RuntimeError(f"ingest accounting does not add up: {summary}")  # would mean a lost clip
    atomic_write_json(out / "ingest.json", asdict(summary))
    return summary
