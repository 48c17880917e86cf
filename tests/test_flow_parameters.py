"""Every flow in `flows/` can be run from a deployment: its parameters are plain JSON, they pass the
schema the Prefect server checks a deployment's runs against, and they validate the way a runner
validates them, in a fresh process that got the flow by cloudpickle (`flow.serve`'s runs) or by its
file entrypoint (`prefect deploy`'s). A flow whose annotation names a type its module does not carry
into that process fails here (the cron-fired pipeline runs all failed so before)."""

from __future__ import annotations

import importlib
import json
import multiprocessing
import pkgutil
from pathlib import Path

import cloudpickle
import pytest
from prefect import Flow

from auralsam2.config import PROJECT_ROOT, config_to_yaml, load_config

CONFIG_YAML = config_to_yaml(load_config(PROJECT_ROOT / "configs" / "demo_tiny.yaml"))
SELECTION = {"split": "test", "protocol": "avsbench_official", "decoding": "iou_select", "subsets": ["v1m"],
             "splits": [], "protocols": []}
CACHE_SETTINGS = {"sam2_config": "tiny", "checkpoint": None, "image_size": 96, "views": 1, "text_encoder": None}

# one real parameter set per flow (by its Prefect name); a new flow must add one
PARAMETERS = {
    "pipeline": {"config_yaml": CONFIG_YAML, "raw": "raw/AVSBench", "subset": "v1m", "ablate_grid": "smoke",
                 "selection": SELECTION, "workers": 2, "dask_address": None, "row_workers": 2},
    "ingest": {"dataset": "avss", "root": "raw/AVSBench", "out": "home/ingest/avss", "subset": "all",
               "strict": True, "clips_per_shard": 16, "progress": False, "force": False, "follow_symlinks": False},
    "cache": {"ingest": "home/ingest/avss", "out": "home/cache/avss", "settings": CACHE_SETTINGS,
              "rebuild": False, "created": "2026-01-01T00:00:00+00:00", "recheck": True, "progress": False},
    "train": {"config_yaml": CONFIG_YAML, "resume": True, "parent_run_id": "0123abcd", "tracking": True, "nproc": 2},
    "evaluate": {"checkpoint": "home/runs/demo/full/best.ckpt", "config_yaml": CONFIG_YAML, "splits": ["test"],
                 "run_id": None, "tracking": True, "prompts": ["points", "box"]},
    "ablate": {"config_yaml": CONFIG_YAML, "grid": "smoke", "rows": ["full", "visual_only"], "selection": SELECTION,
               "tracking": True, "row_workers": 2},
    "ablate-rows": {"config_yamls": [CONFIG_YAML, CONFIG_YAML], "row_names": ["full", "visual_only"],
                    "parent_run_id": None, "selection": SELECTION, "tracking": False, "pool_lanes": 1,
                    "order": [1, 0]},
}


def _flows() -> dict[str, tuple[Flow, str | None]]:
    """Every flow of the `flows` package: name -> (flow, its file entrypoint, or None when it is built
    on demand and has no module attribute to point at)."""
    import flows
    import flows.cache

    found: dict[str, tuple[Flow, str | None]] = {}
    for info in pkgutil.iter_modules(flows.__path__):
        if info.name in ("__main__", "_torchrun"):  # scripts, not modules
            continue
        module = importlib.import_module(f"flows.{info.name}")
        for attr, value in vars(module).items():
            if isinstance(value, Flow) and value.fn.__module__ == module.__name__:
                path = Path(module.__file__).relative_to(PROJECT_ROOT)
                found[value.name] = (value, f"{path}:{attr}")
    cache_flow = flows.cache.cache_flow  # built when first used (keeps `--help` from importing Prefect)
    found.setdefault(cache_flow.name, (cache_flow, None))
    return found


def _validate_in_a_fresh_process(flows_: list[tuple[str, bytes, str | None, dict]], results) -> None:
    """Load each flow as a runner does, validate its parameters; put {name: {loader: result}}."""
    import os
    import sys

    from prefect.flows import load_flow_from_entrypoint

    os.chdir(PROJECT_ROOT)
    sys.path.insert(0, str(PROJECT_ROOT))
    out: dict[str, dict[str, str]] = {}
    for name, pickled, entrypoint, parameters in flows_:
        loaders = {"cloudpickle": lambda p=pickled: cloudpickle.loads(p)}
        if entrypoint:
            loaders["entrypoint"] = lambda e=entrypoint: load_flow_from_entrypoint(e, use_placeholder_flow=False)
        out[name] = {}
        for how, load in loaders.items():
            try:
                out[name][how] = json.dumps(load().validate_parameters(parameters), sort_keys=True)
            except Exception as exc:  # reported to the test, which names it
                out[name][how] = f"FAILED: {type(exc).__name__}: {exc}"
    results.put(out)


def test_every_flow_takes_plain_json_parameters_that_validate_as_a_deployment_run_does() -> None:
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    found = _flows()
    assert set(found) == set(PARAMETERS), "every flow needs a parameter set here (and only those flows)"
    for name, (flow_, _) in sorted(found.items()):
        parameters = PARAMETERS[name]
        assert json.loads(json.dumps(parameters)) == parameters
        schema = parameter_schema(flow_.fn)
        assert set(schema.properties) == set(parameters), f"{name}: give every parameter a value"
        # what the server checks a deployment's run against (`enforce_parameter_schema`)
        validate(parameters, schema.model_dump_for_openapi(), raise_on_error=True, ignore_required=False)

    ctx = multiprocessing.get_context("spawn")  # as Prefect's runner starts a flow run
    results = ctx.Queue()
    jobs = [(name, cloudpickle.dumps(flow_), entrypoint, PARAMETERS[name])
            for name, (flow_, entrypoint) in sorted(found.items())]
    process = ctx.Process(target=_validate_in_a_fresh_process, args=(jobs, results))
    process.start()
    got = results.get(timeout=300)
    process.join(timeout=60)
    for name, (_, entrypoint) in found.items():
        expected = json.dumps(PARAMETERS[name], sort_keys=True)
        assert set(got[name]) == ({"cloudpickle", "entrypoint"} if entrypoint else {"cloudpickle"})
        for how, validated in got[name].items():
            assert validated == expected, f"flow {name!r} loaded by {how}: {validated}"


@pytest.mark.parametrize("bad", [{"config_yaml": 3}, {"config_yaml": CONFIG_YAML, "selection": "test"}])
def test_a_deployment_parameter_of_the_wrong_type_is_refused_by_the_schema(bad: dict) -> None:
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import ValidationError, validate

    from flows.pipeline import pipeline_flow

    with pytest.raises(ValidationError):
        validate(bad, parameter_schema(pipeline_flow.fn).model_dump_for_openapi(), raise_on_error=True)
