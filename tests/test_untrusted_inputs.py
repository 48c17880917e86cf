"""Untrusted inputs and the user's own files (issue 33): every fast trial of `bench.untrusted_probe`
(hostile configs, checkpoints, shards and raw trees; damaged and read-only stores; output folders
that hold the user's files; paths and names), run with the real command line on a small workspace
built once, in a process of its own (it forks one warm child per command). Ctrl-C and SIGTERM are
trials of `bench.kill_injection` (tests/test_kill_injection.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench import untrusted_probe as probe

REPO = Path(__file__).resolve().parents[1]


def test_every_fast_trial_holds(session_home: Path) -> None:
    home = session_home / "untrusted"
    out = home / "verdicts.json"
    done = subprocess.run([sys.executable, "-m", "bench.untrusted_probe", "--home", str(home), "--fast", "--json",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert out.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    verdicts = json.loads(out.read_text())
    assert [v["name"] for v in verdicts] == [t.name for t in probe.TRIALS if t.fast]
    failed = [f"{v['name']}: {v['detail']}" for v in verdicts if v["verdict"] == "failed"]
    assert failed == [], "\n".join(failed)
    assert done.returncode == 0, done.stdout[-2000:]


def test_every_case_of_the_issue_is_a_named_trial() -> None:
    names = [t.name for t in probe.TRIALS]
    assert len(set(names)) == len(names)
    assert {"report_out_users_folder", "report_out_data_folder", "segment_out_users_folder", "sam2_config_payloads",
            "pickled_checkpoint", "damaged_mlflow_store", "read_only_mlflow_store", "read_only_data_folder",
            "unwritable_prefect_home", "special_characters_in_the_data_folder", "names_that_are_paths",
            "shard_traversal_member", "shard_tar_bomb", "shard_sparse_2gb_member", "uid_too_long", "huge_black_mask",
            "checkpoint_asks_for_a_huge_model", "billion_laughs_config", "absurd_training_settings"} <= set(names)


def test_store_uris_keep_a_data_folder_with_special_characters(tmp_path: Path) -> None:
    """`%41`, `?`, `#`, a space and non-ASCII in the data folder's path: the MLflow store and Prefect's
    database are the files inside it (an unquoted URI would name `aAb`, or stop at the `?`). The
    probe's slow trial runs a real ingest and training there."""
    import os

    home = tmp_path / "a%41 b?c#é"
    script = """
import os
from pathlib import Path
from sqlalchemy.engine import make_url
import flows
from flows import tracking
run = tracking.start_run("paths", "one")
tracking.end_run(run)
print(make_url(os.environ["PREFECT_API_DATABASE_CONNECTION_URL"]).database)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_HOME", "PREFECT_API_DATABASE_CONNECTION_URL",
                                                             "MLFLOW_TRACKING_URI")}
    done = subprocess.run([sys.executable, "-c", script], env={**env, "AURALSAM2_HOME": str(home)}, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(home / "prefect" / "prefect.db")
    assert (home / "mlflow" / "mlflow.db").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [home.name]


def test_an_unwritable_prefect_home_fails_before_the_server_starts(tmp_path: Path, monkeypatch) -> None:
    """An immutable Prefect home (even root cannot write it): one error at once, not minutes of retries."""
    import pytest

    from flows._env import _check_prefect_home

    home = tmp_path / "prefect"
    home.mkdir()
    with probe.immutable(home) if _chattr_works(tmp_path) else _skip():
        monkeypatch.setenv("PREFECT_HOME", str(home))
        with pytest.raises(PermissionError, match="Prefect's home .* not writable"):
            _check_prefect_home()


def _chattr_works(tmp_path: Path) -> bool:
    probe_file = tmp_path / "chattr-probe"
    probe_file.write_text("")
    works = subprocess.run(["chattr", "+i", str(probe_file)], capture_output=True).returncode == 0
    subprocess.run(["chattr", "-i", str(probe_file)], capture_output=True)
    return works


def _skip():
    import pytest

    pytest.skip("chattr +i is not possible on this file system")
