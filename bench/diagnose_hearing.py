"""Why the synthetic demo does (not) hear: controlled experiments on the demo's data and model.

Each experiment trains the demo config (`configs/demo.yaml`, CPU, one thread) for `--steps` steps
and scores the multi-source test split (v1m + v2, AVSBench protocol, iou_select), like the demo
(`--split val` to choose a setting honestly):

* `real`: the demo as configured (VGGish log-mel audio) - the reference;
* `visual`: the visual-only ablation row;
* `oracle_audio`: the audio embedding replaced by a perfect code of who sounds in each frame (a
  multi-hot over the on-screen sounding categories, from the world's ground truth), bypassing
  VGGish: rules the audio encoder in or out;
* `oracle_dense`: the fuser's dense prompts plus a learnt vector times the frame's ground-truth
  mask pooled to the prompt grid: the best a dense prompt can do through the frozen decoder and
  memory; rules the frozen SAM2 path in or out;
and for every trained model, the share of predicted pixels that change when the clip's audio is
replaced (by silence for the oracle code, by the frames in another order for real audio).

    python -m bench.diagnose_hearing [--steps 120] [--experiments real,visual,oracle_audio,oracle_dense]

Builds the default synthetic world and its demo cache in a temporary data folder (or `--home`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

VISUAL_ONLY = {"model.fuser.modalities": "visual", "model.fuser.sparse_prompts": False,
               "model.fuser.mask_prompt": False, "loss.audiocon.mode": "off"}
MULTI_SOURCE = ["v1m", "v2"]


def oracle_codes(world_json: Path, dim: int) -> dict[str, torch.Tensor]:
    """clip key -> (T, dim) multi-hot of the on-screen categories sounding in each frame."""
    from data_specs.synth_world import SEEN_CATEGORIES

    k = len(SEEN_CATEGORIES)
    codes = {}
    for clip in json.loads(world_json.read_text())["clips"]:
        if clip["dataset"] != "avss":
            continue
        code = torch.zeros(clip["n_frames"], dim)
        for obj in clip["objects"]:
            if obj["on_screen"] and obj["category"] in SEEN_CATEGORIES:
                j = SEEN_CATEGORIES.index(obj["category"])
                for t, sounding in enumerate(obj["sounding"]):
                    if sounding:
                        code[t, j::k] = 1.0
        codes[f"{clip['subset']}-{clip['uid']}"] = code
    return codes


class Items:
    """A CacheItems wrapper that swaps the audio for the oracle code and/or records the item's GT."""

    def __init__(self, items, codes=None, state=None):
        self.items, self.codes, self.state = items, codes, state

    def __len__(self):
        return len(self.items)

    def __getattr__(self, name):
        return getattr(self.items, name)

    def item(self, index, epoch=0):
        it = self.items.item(index, epoch)
        if self.codes is not None:
            it = type(it)(**{**it.__dict__, "log_mel": self.codes[it.clip_key][: it.n_frames]})
        if self.state is not None:
            self.state["gt"] = it.masks
        return it


def run(kind: str, steps: int, home: Path, codes, sets: dict | None = None, split: str = "test") -> dict:
    from auralsam2.checkpoints import read_weights
    from auralsam2.config import demo_config_path, load_config
    from auralsam2.engine import TrainingData, train
    from auralsam2.evaluation import evaluate_source
    from feature_cache.dataset import CacheItems, open_reader, training_data

    overrides = {"train.max_steps": steps, "train.epochs": 100000, "train.progress": False, "data.val_split": None,
                 "train.device": "cpu", **(VISUAL_ONLY if kind == "visual" else {}), **(sets or {})}
    cfg = load_config(demo_config_path(), [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    reader = open_reader(cfg, "cpu")
    data = training_data(cfg, reader)
    state: dict = {}
    use_codes = codes if kind == "oracle_audio" else None
    track_gt = state if kind == "oracle_dense" else None
    data = TrainingData(sam2=data.sam2, train=Items(data.train, use_codes, track_gt), select=None, select_split=None)

    import auralsam2.engine.loop as engine  # `train` builds its model through this module's name

    build = engine.build_model
    extra: list[torch.nn.Parameter] = []
    if kind == "oracle_dense":
        def build_with_oracle(model_cfg, sam2):
            model = build(model_cfg, sam2)
            u = torch.nn.Parameter(torch.zeros(3, model_cfg.fuser.dim))
            model.register_parameter("oracle_dense_u", u)
            fuser_forward = model.fuser.forward

            def forward(levels, audio, text=None):
                out = fuser_forward(levels, audio, text)
                grid = levels[2].shape[-1]
                gt = F.adaptive_avg_pool2d(state["gt"].float()[:, None], (grid, grid)).flatten(1)[..., None]
                # x20: Adam moves u 20x faster than the fuser's weights (lr 1e-2 effective)
                return out._replace(dense=[d + gt.to(d.dtype) * (20.0 * u[k]) for k, d in enumerate(out.dense)])

            model.fuser.forward = forward
            extra.append(u)
            return model

        engine.build_model = build_with_oracle
    tag = "".join(f"-{k.split('.')[-1]}={v}" for k, v in (sets or {}).items())
    run_dir = home / "runs" / f"diagnose-{kind}-{steps}{tag}"
    start = time.perf_counter()
    try:
        result = train(cfg, data, run_dir)
        model = engine.build_model(cfg.model, reader.model)
    finally:
        engine.build_model = build
    train_s = time.perf_counter() - start
    weights = read_weights(result.last_checkpoint)["trainable"]
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected, unexpected
    model.eval()
    test = Items(CacheItems(reader, split, task=cfg.task, subsets=MULTI_SOURCE, training=False), use_codes, track_gt)
    ev = evaluate_source(model, test, split, task=cfg.task, protocols=["avsbench_official"], decodings=["iou_select"])
    changed, total = 0.0, 0
    if kind != "visual":
        for i in range(len(test)):
            it = test.item(i)
            other = torch.zeros_like(it.log_mel) if use_codes is not None else it.log_mel.roll(1, 0)
            with torch.no_grad():
                a = model.forward_clip(list(it.pyramid), it.log_mel, None, cond_frame=0)
                b = model.forward_clip(list(it.pyramid), other, None, cond_frame=0)
            for fa, fb in zip(a.frames, b.frames, strict=True):
                ma = fa.high_res_masks[0, fa.best_index] > 0
                mb = fb.high_res_masks[0, fb.best_index] > 0
                changed += float((ma ^ mb).float().mean())
                total += 1
    return {"experiment": kind + tag, "steps": steps, "split": split, "train_s": round(train_s, 1),
            "J": round(ev.value("avsbench_official", "iou_select", "J"), 3),
            "F": round(ev.value("avsbench_official", "iou_select", "F"), 3),
            "pixels_changed_by_audio": round(changed / total, 4) if total else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--experiments", default="real,visual,oracle_audio,oracle_dense")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every experiment (YAML value), e.g. optim.lr=5e-3")
    parser.add_argument("--home", type=Path, default=None, help="data folder (default: a new temporary one)")
    parser.add_argument("--split", default="test", help="multi-source split scored (val to choose settings)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    home = args.home or Path(tempfile.mkdtemp(prefix="diagnose-hearing-"))
    os.environ["AURALSAM2_HOME"] = str(home)
    if not (home / "cache" / "demo_avss" / "cache.json").is_file():
        from bench.gpu_demo import build_demo_data

        build_demo_data(home, None, "cpu")
    from auralsam2.config import demo_config_path, load_config

    codes = oracle_codes(home / "world" / "world.json", load_config(demo_config_path()).model.fuser.audio_dim)
    rows = []
    for kind in args.experiments.split(","):
        import yaml

        sets = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.sets)}
        rows.append(run(kind, args.steps, home, codes, sets, args.split))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n| experiment | steps | {args.split} J | {args.split} F | pixels changed by the audio |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['experiment']} | {r['steps']} | {r['J']} | {r['F']} | {r['pixels_changed_by_audio']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
