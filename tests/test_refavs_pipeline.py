"""Ref-AVS end to end: the pipeline hears and reads, through a text encoder written with
`save_pretrained` (exactly the path the released distilroberta-base takes), as one real Prefect flow
with a real MLflow run and DuckDB rows for test_s, test_u and test_n; the text cache follows the
encoder; preflight names everything a run is missing before it starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from auralsam2.config import PROJECT_ROOT, load_config
from data_specs.synth import SynthConfig, generate_world

CONFIG = PROJECT_ROOT / "configs" / "demo_refavs_tiny.yaml"
TINY_RUN = ["train.max_steps=2", "train.epochs=1", "data.max_val_items=2", "eval.overlays=1",
            "experiment=refavs_pipeline_test", "data.ingest=ingest/refavs_test", "data.cache=cache/refavs_test"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("refavs-world")
    generate_world(out, SynthConfig(seed=13, clips=4, size=96), progress=False)
    return out


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> tuple[Path, Path]:
    """Two small RoBERTa folders written with `save_pretrained` (tokenizer + model), seeds 0 and 1."""
    from auralsam2.pretrain.text import write_tiny_text_encoder
    from data_specs.synth_plans import expression_corpus

    base = tmp_path_factory.mktemp("text-encoders")
    return tuple(write_tiny_text_encoder(base / f"roberta-{s}", expression_corpus(), hidden_size=32, seed=s)
                 for s in (0, 1))


def test_refavs_pipeline_end_to_end(world: Path, encoders) -> None:
    import mlflow

    from auralsam2.paths import data_home, mlflow_tracking_uri
    from dashboards.views import connect
    from flows.pipeline import run_pipeline

    result = run_pipeline(CONFIG, [*TINY_RUN, f"model.text_encoder={encoders[0]}"], raw=world / "REFAVS")
    assert set(result["evaluate"]["splits"]) == {"test_s", "test_u", "test_n"}
    assert result["evaluate"]["splits"]["test_n"]["S"] == result["evaluate"]["splits"]["test_n"]["S"]  # a number
    run_id = result["train"]["run_id"]
    mlflow.set_tracking_uri(mlflow_tracking_uri())
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert any(k.startswith("test/test_s/refavs_official/") for k in run.data.metrics)
    assert any(k.startswith("test/test_n/") and k.endswith("/S") for k in run.data.metrics)

    con = connect(data_home())
    rows = dict(con.execute("select split, count(*) from clip_metrics where run_id = ? and protocol = "
                            "'refavs_official' group by split", [run_id]).fetchall())
    assert set(rows) == {"test_s", "test_u", "test_n"} and min(rows.values()) > 0
    nulls = con.execute("select bool_and(is_null) from clip_metrics where run_id = ? and split = 'test_n'",
                        [run_id]).fetchone()[0]
    assert nulls is True
    # the text cache was built once with this encoder, and the runs are Prefect flow runs
    info = __import__("json").loads((data_home() / "cache" / "refavs_test" / "cache.json").read_text())
    assert info["text"]["fingerprint"]["text_encoder"] == str(encoders[0])
    assert info["text"]["rows"] > 0

    # another encoder: the text cache is rebuilt and the model trained again, as another run (its
    # name's hash covers the cache), never the finished run of the first encoder reused
    other = run_pipeline(CONFIG, [*TINY_RUN, f"model.text_encoder={encoders[1]}"], raw=world / "REFAVS")
    assert other["run_name"] != result["run_name"] and other["train"]["run_id"] != run_id
    assert other["cache"]["fingerprint"] != result["cache"]["fingerprint"]
    assert mlflow.get_run(other["train"]["run_id"]).info.status == "FINISHED"
    # and the first encoder again: the text cache follows it back, and its finished run is reused
    again = run_pipeline(CONFIG, [*TINY_RUN, f"model.text_encoder={encoders[0]}"], raw=world / "REFAVS")
    assert again["run_name"] == result["run_name"] and again["train"]["run_id"] == run_id


def test_the_text_cache_follows_the_encoder_and_only_the_text_cache(world: Path, encoders, tmp_path: Path) -> None:
    """Changing the encoder rebuilds the text file and reuses every SAM2 feature file; the same
    encoder again reuses the text file too (`cache_is_current` agrees)."""
    from feature_cache.build import build_cache, cache_is_current
    from feature_cache.schema import CacheSettings
    from tests.test_feature_cache import ingest_plain

    ingest = ingest_plain("refavs", world / "REFAVS", tmp_path / "ingest", clips_per_shard=3)
    out = tmp_path / "cache"

    def settings(encoder: Path) -> CacheSettings:
        return CacheSettings(sam2_config="tiny", text_encoder=str(encoder), device="cpu")

    def stamps(kind: str) -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in sorted((out / kind).glob("*.arrow"))}

    build_cache(ingest, out, settings(encoders[0]), progress=False)
    features, text = stamps("features"), stamps("text")
    assert features and len(text) == 1 and cache_is_current(ingest, out, settings(encoders[0]))
    assert not cache_is_current(ingest, out, settings(encoders[1]))

    build_cache(ingest, out, settings(encoders[1]), progress=False)
    assert stamps("features") == features  # SAM2 features: reused, not rewritten
    assert stamps("text") != text  # text embeddings: rebuilt for the new encoder
    assert cache_is_current(ingest, out, settings(encoders[1]))
    rebuilt = stamps("text")
    build_cache(ingest, out, settings(encoders[1]), progress=False)
    assert stamps("text") == rebuilt and stamps("features") == features


def test_preflight_lists_everything_missing_before_any_work(tmp_path: Path, encoders) -> None:
    from auralsam2.paths import data_home
    from flows.cli import app
    from flows.pipeline import run_pipeline
    from flows.preflight import PreflightError

    missing = [f"model.sam2.checkpoint={tmp_path / 'sam2_hiera_tiny.pt'}",
               f"model.vggish_checkpoint={tmp_path / 'vggish-10086976.pth'}",
               f"model.text_encoder={tmp_path / 'distilroberta-base'}",
               "data.ingest=ingest/never", "data.cache=cache/never", "experiment=preflight_test"]
    with pytest.raises(PreflightError) as err:
        run_pipeline(CONFIG, missing)
    message = str(err.value)
    assert "4 problem(s)" in message
    for needle in ("model.sam2.checkpoint", "model.vggish_checkpoint", "model.text_encoder", "--raw RAW_DATASET_DIR"):
        assert needle in message, needle
    assert not (data_home() / "ingest" / "never").exists() and not (data_home() / "cache" / "never").exists()

    # the commands say it in one message, without a traceback
    result = CliRunner().invoke(app, ["run", str(CONFIG), *sum((["--set", m] for m in missing), [])])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.count("error:") == 1 and "4 problem(s)" in result.output
    result = CliRunner().invoke(app, ["train", str(CONFIG), "--set", f"model.text_encoder={encoders[0]}",
                                      "--set", "model.fuser.text_dim=48", "--set", "data.cache=cache/never"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "model.fuser.text_dim=48" in result.output and "hidden size 32" in result.output
    assert "no complete feature cache" in result.output


def test_a_refavs_config_needs_a_text_encoder_and_the_released_preset_names_one() -> None:
    from auralsam2.config import ConfigError

    assert load_config(PROJECT_ROOT / "configs" / "refavs_hiera_l.yaml").model.text_encoder == \
        "distilbert/distilroberta-base"
    with pytest.raises(ConfigError, match="set model.text_encoder"):
        load_config(CONFIG, ["model.text_encoder=null"])


def test_a_cache_identity_covers_clips_features_and_text_but_not_where_the_encoder_lies() -> None:
    from feature_cache.build import cache_identity

    text = {"files_sha256": {"model.safetensors": "a" * 64}, "text_encoder": "here/roberta", "format": 2}
    info = {"fingerprint_id": "f" * 16, "text": {"fingerprint": text}}
    base = cache_identity(info, "m" * 64)
    assert cache_identity(info, "n" * 64) != base  # other clips
    assert cache_identity({**info, "fingerprint_id": "g" * 16}, "m" * 64) != base  # other SAM2 features
    other_weights = {**text, "files_sha256": {"model.safetensors": "b" * 64}}
    assert cache_identity({**info, "text": {"fingerprint": other_weights}}, "m" * 64) != base
    moved = {**text, "text_encoder": "elsewhere/roberta"}
    assert cache_identity({**info, "text": {"fingerprint": moved}}, "m" * 64) == base
    assert cache_identity({"fingerprint_id": "f" * 16}, "m" * 64) != base  # AVSBench: no text


def test_an_ablation_summary_of_ref_avs_defaults_to_its_three_test_splits():
    """`auralsam2 ablate` / `run --ablate` without --split: Ref-AVS's seen, unseen and null test splits
    (there is no `test`), AVSBench's `test`."""
    from flows.ablate import SummarySelection

    ref = SummarySelection.default_for(load_config(CONFIG))
    assert ref.split_list() == ["test_s", "test_u", "test_n"] and ref.subsets == []
    assert SummarySelection.default_for(load_config(CONFIG), ["refavs"]).split_list() == ["test_s", "test_u", "test_n"]
    assert SummarySelection.default_for(load_config(PROJECT_ROOT / "configs" / "demo.yaml")).split_list() == ["test"]
