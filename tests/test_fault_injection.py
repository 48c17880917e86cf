"""The fault-injection suite (issue 16): one file of a real workspace damaged per trial, the real
command that reads it run, the verdict counted. The fast part covers every file kind and every fault
once; the seeded sweep (`make bench`, and the slow test) draws many more."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bench.fault_injection import BAD, FAULTS, READERS, Trial, apply_fault, judge

REPO = Path(__file__).resolve().parents[1]


def _sweep(home: Path, per_kind: int, seed: int) -> list[dict]:
    out = home / "trials.json"
    done = subprocess.run([sys.executable, "-m", "bench.fault_injection", "--home", str(home), "--per-kind",
                           str(per_kind), "--seed", str(seed), "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert out.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    trials = json.loads(out.read_text())["trials"]
    bad = [t for t in trials if t["verdict"] in BAD]
    assert not bad, json.dumps(bad, indent=1)[:6000]
    assert done.returncode == 0, done.stderr[-3000:]
    return trials


def test_every_file_kind_and_fault_is_detected_or_harmless(tmp_path: Path) -> None:
    trials = _sweep(tmp_path, per_kind=1, seed=0)
    assert {t["kind"] for t in trials} == set(READERS)
    assert {(t["kind"], t["consumer"]) for t in trials} == {(k, c) for k, cs in READERS.items() for c in cs}
    assert {t["fault"] for t in trials} == set(FAULTS)
    verdicts = Counter(t["verdict"] for t in trials)
    # a missing or empty file is never harmless to the command that reads it, unless it rewrites it
    for t in trials:
        if t["fault"] in ("missing", "empty") and t["verdict"] == "harmless":
            # a shard of a split evaluate does not read; the cache's manifest snapshot (verify reports it)
            assert t["kind"] in ("features_arrow", "audio_arrow") or (t["kind"], t["consumer"]) == (
                "cache_manifest", "evaluate"), t
    assert verdicts["detected"] >= len(trials) // 2, verdicts


@pytest.mark.slow
def test_seeded_sweep_has_no_silent_corruption_crash_or_traceback(tmp_path: Path) -> None:
    trials = _sweep(tmp_path, per_kind=5, seed=1)
    assert len(trials) == 5 * sum(len(c) for c in READERS.values())


def test_the_verdicts(tmp_path: Path) -> None:
    import random

    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 20)
    rng = random.Random(0)
    for fault in FAULTS:
        original = path.read_bytes() if path.is_file() else bytes(range(256)) * 20
        path.write_bytes(original)
        apply_fault(path, fault, rng)
        after = path.read_bytes() if path.is_file() else None
        assert after != original
    t = Trial("cache_json", "cache/cache.json", "flip", "", "cache_verify")
    assert judge(t, 1, "", "error: /x/cache/cache.json: fails its checksum\n", None, "b", False) == "detected"
    assert judge(t, 1, "", "error: something else\n", None, "b", False) == "unnamed"
    assert judge(t, 0, "", "", "a", "b", False) == "silent"
    assert judge(t, 0, "", "", "b", "b", False) == "harmless"
    assert judge(t, 0, "", "", "b", "b", True) == "repaired"
    assert judge(t, -11, "", "", None, "b", False) == "crash"
    assert judge(t, None, "", "", None, "b", False) == "crash"
    assert judge(t, 1, "", "Traceback (most recent call last):\n", None, "b", False) == "traceback"
