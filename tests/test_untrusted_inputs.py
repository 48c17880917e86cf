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
