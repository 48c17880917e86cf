"""The cache flow end to end: real Prefect flow runs, a real 2-worker Dask cluster, a real SIGKILL.

Ingest is done without Prefect (tested in test_ingest.py); the tiny SAM2 is saved to a .pt file so
that every process (the flow, the Dask workers, a killed subprocess) loads the same weights.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from auralsam2.backbone import build_sam2_model, save_sam2_checkpoint
from data_specs.synth import SynthConfig, generate_world
from feature_cache.build import build_cache
from feature_cache.reader import CacheReader
from feature_cache.schema import CacheSettings, StaleCacheError
from feature_cache.verify import verify_cache
from flows.cache import run_cache
from flows.cli import app
from tests.test_feature_cache import ingest_plain, tree_bytes
from tests.train_fixtures import tiny_text_encoder_dir

EPOCH = 1767225600
CREATED = dt.datetime.fromtimestamp(EPOCH, dt.UTC).isoformat()


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> SimpleNamespace:
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("cache-flow")
    generate_world(base / "world", SynthConfig(seed=9, clips=4, size=96), progress=False)
    ingest = ingest_plain("refavs", base / "world" / "REFAVS", base / "ingest", clips_per_shard=2)
    torch.manual_seed(4)
    checkpoint = save_sam2_checkpoint(build_sam2_model("tiny"), base / "tiny.pt")
    settings = CacheSettings(sam2_config="tiny", checkpoint=str(checkpoint), views=2,
                             text_encoder=str(tiny_text_encoder_dir()))
    local = base / "local"
    summary = run_cache(ingest, local, settings, created=CREATED, progress=False)
    assert summary.shards_built == summary.shards > 1
    return SimpleNamespace(base=base, ingest=ingest, checkpoint=checkpoint, settings=settings, local=local)


def test_flow_build_is_byte_identical_to_the_plain_build_and_reruns_skip(env) -> None:
    """The Prefect flow (thread runner) writes exactly what the plain-Python build writes.

    (The Dask runner is compared with the plain build in test_feature_cache_dask.py.)
    """
    assert verify_cache(env.local).ok
    plain = env.base / "plain"
    build_cache(env.ingest, plain, env.settings, created=CREATED, progress=False)
    reference = tree_bytes(env.local)
    assert any(k.startswith("text/") for k in reference) and any(k.startswith("audio/") for k in reference)
    assert tree_bytes(plain) == reference

    # A second run over a complete cache skips every shard and changes nothing.
    again = run_cache(env.ingest, env.local, env.settings, created=CREATED, progress=False)
    assert again.shards_skipped == again.shards and again.frames_encoded == 0
    assert tree_bytes(env.local) == reference


@pytest.mark.slow  # a second process with its own Prefect server; the crash state itself is covered fast in
# test_feature_cache_integrity.py::test_crash_state_resumes_to_a_complete_identical_cache
def test_killed_flow_process_resumes_to_a_complete_cache(env) -> None:
    out = env.base / "killed"
    cmd = [sys.executable, "-m", "flows", "cache", "--shards", str(env.ingest), "--out", str(out), "--sam2-config",
           "tiny", "--checkpoint", str(env.checkpoint), "--views", "2", "--text-encoder", "tiny"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)})
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "audio").is_dir() and any((out / "audio").glob("*.arrow")):  # a first shard is complete
            break
        time.sleep(0.005)
    killed_midway = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed_midway, "the cache subprocess finished or failed before it could be killed"
    assert not (out / "index.parquet").exists()

    summary = run_cache(env.ingest, out, env.settings, created=CREATED, progress=False)
    assert summary.shards_skipped >= 1 and summary.shards_built >= 1
    report = verify_cache(out)
    assert report.ok, report.lines()
    keys = [(r["clip"], r["frame"], r["view"]) for r in pq.read_table(out / "index.parquet").to_pylist()]
    assert len(keys) == len(set(keys)) == summary.rows
    assert tree_bytes(out) == tree_bytes(env.local)


def test_cli_verify_size_and_stale_refusal(env) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["cache", "verify", str(env.local)])
    assert ok.exit_code == 0 and "OK" in ok.output

    size = runner.invoke(app, ["cache", "size", str(env.local)])
    assert size.exit_code == 0 and "per (frame, view) record" in size.output and "train:" in size.output
    predicted = runner.invoke(app, ["cache", "size", "--predict", "--sam2-config", "tiny", "--frames", "1000"])
    assert predicted.exit_code == 0 and "1000 frames" in predicted.output

    broken = shutil.copytree(env.local, env.base / "broken")
    next((broken / "audio").glob("*.arrow")).unlink()
    bad = runner.invoke(app, ["cache", "verify", str(broken)])
    assert bad.exit_code == 1 and "missing" in bad.output

    args = ["cache", "--shards", str(env.ingest), "--out", str(broken), "--sam2-config", "tiny",
            "--checkpoint", str(env.checkpoint), "--views", "1"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and "views.count: cached 2, requested 1" in refused.output
    rebuilt = runner.invoke(app, [*args, "--rebuild"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert verify_cache(broken).ok
    with pytest.raises(StaleCacheError):
        CacheReader(broken, expect={"views": {"count": 2}})
    assert CacheReader(broken, expect={"views.count": 1}).views(CacheReader(broken).keys("train")[0]) == 1

    missing = runner.invoke(app, ["cache", "--out", str(broken)])
    assert missing.exit_code == 1 and "--shards" in missing.output
