"""The cache flow on a real 2-worker local Dask cluster (prefect-dask) writes the same bytes as a plain build.

Every worker process loads the tiny SAM2 from the same .pt file and runs torch with the same fixed
thread count (the flow's default), so the shard files, the text file, the index and cache.json are
byte-identical to the in-process build (whose equality with the thread-runner flow is tested in
test_cache_flow.py).
"""

from __future__ import annotations

import torch

from auralsam2.backbone import build_sam2_model, save_sam2_checkpoint
from data_specs.synth import SynthConfig, generate_world
from feature_cache.build import build_cache
from feature_cache.schema import CacheSettings
from feature_cache.verify import verify_cache
from flows.cache import run_cache
from tests.test_feature_cache import ingest_plain, tree_bytes
from tests.train_fixtures import tiny_text_encoder_dir

CREATED = "2026-01-01T00:00:00+00:00"


def test_dask_built_cache_is_byte_identical_to_the_local_build(tmp_path) -> None:
    torch.set_num_threads(1)
    generate_world(tmp_path / "world", SynthConfig(seed=9, clips=4, size=96), progress=False)
    ingest = ingest_plain("refavs", tmp_path / "world" / "REFAVS", tmp_path / "ingest", clips_per_shard=2)
    torch.manual_seed(4)
    checkpoint = save_sam2_checkpoint(build_sam2_model("tiny"), tmp_path / "tiny.pt")
    settings = CacheSettings(sam2_config="tiny", checkpoint=str(checkpoint), views=2,
                             text_encoder=str(tiny_text_encoder_dir()))

    build_cache(ingest, tmp_path / "local", settings, created=CREATED, progress=False)
    summary = run_cache(ingest, tmp_path / "dask", settings, workers=2, created=CREATED, progress=False)
    assert summary.shards_built == summary.shards > 1 and summary.rows > 0
    reference = tree_bytes(tmp_path / "local")
    assert any(k.startswith("features/") for k in reference) and any(k.startswith("text/") for k in reference)
    assert tree_bytes(tmp_path / "dask") == reference
    assert verify_cache(tmp_path / "dask").ok
