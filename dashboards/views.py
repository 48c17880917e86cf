"""DuckDB views over the metrics Parquet tables and the runs table exported from MLflow.

Views: `frame_metrics`, `clip_metrics`, `ablation_summary` (see `dashboards.schema`) and `runs`
(`<data>/metrics/runs.parquet`, one row per MLflow run with `params.*`/`metrics.*` columns). A table
with no file yet is an empty view with the right columns, so queries never fail for lack of data.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from dashboards.schema import TABLES, metrics_dir, table_files

RUNS_BASE = pa.schema([
    ("run_id", pa.string()), ("experiment", pa.string()), ("run_name", pa.string()),
    ("parent_run_id", pa.string()), ("status", pa.string()), ("start_time", pa.timestamp("ms")),
    ("end_time", pa.timestamp("ms")),
])


_DUCK_TYPES = {"string": "varchar", "double": "double", "int64": "bigint", "int32": "integer", "bool": "boolean"}


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def connect(data_home: str | Path, database: str | Path = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the project's views defined over `<data_home>/metrics`."""
    root = metrics_dir(data_home)
    con = duckdb.connect(str(database))
    for name, (schema, _) in TABLES.items():
        files = table_files(data_home, name)
        if files:  # the files by name: a glob over the folder would read `[`, `?` or `*` in its path as patterns
            source = f"read_parquet([{', '.join(_quote(f) for f in files)}], union_by_name=true)"
            present = {row[0] for row in con.execute(f"describe select * from {source}").fetchall()}
            # files written before a column existed still read: the column is NULL there
            added = [f"null::{_DUCK_TYPES[str(f.type)]} as \"{f.name}\"" for f in schema if f.name not in present]
            con.execute(f"create or replace view {name} as select *{''.join(', ' + a for a in added)} from {source}")
        else:
            _empty_view(con, name, schema)
    runs = root / "runs.parquet"
    if runs.is_file():
        con.execute(f"create or replace view runs as select * from read_parquet({_quote(runs)})")
    else:
        _empty_view(con, "runs", RUNS_BASE)
    return con


def _empty_view(con: duckdb.DuckDBPyConnection, name: str, schema: pa.Schema) -> None:
    empty = schema.empty_table()
    con.register(f"_{name}_empty", empty)
    con.execute(f"create or replace view {name} as select * from _{name}_empty")
