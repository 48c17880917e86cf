"""GPU check (prepared for a lent GPU machine): the CUDA paths of the pipeline, end to end, and the
synthetic demo trained for a GPU-sized budget.

1. Backbone exactness on CUDA (tiny SAM2, random weights): the prompted decoder without audio
   prompts equals stock SAM2 (`MaskDecoder.forward`, `_forward_sam_heads` with clicks) bit for bit
   in fp32 and under bf16 autocast; the compact cache form expands to the direct encoding.
2. The demo chain without Prefect (the flows wrap these same functions): synthetic world ->
   WebDataset shards -> feature cache encoded on the GPU (bf16) -> `engine.train` on CUDA (bf16
   autocast) for the full model and the visual-only row -> evaluation on the multi-source test
   split (v1m + v2, AVSBench protocol, iou_select), so the "does it hear" gap can be read at a
   budget the 2-core CPU cannot afford. Each run's step count is sized from a timed probe to fit
   `--budget-s` seconds.

    python -m bench.gpu_demo [--budget-s 90] [--out DIR]
    python -m bench.gpu_demo --budget-s 5 --max-steps 6 --demo-steps 3 --clips 4   # CPU smoke run

Prints Markdown and a JSON line; writes both to $OUT/gpu_demo.{md,json} when $OUT is set.
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

MULTI_SOURCE = ["v1m", "v2"]


def check_backbone(device: torch.device) -> dict:
    """Max abs differences (all must be 0, compact within bf16 rounding) on `device`."""
    from auralsam2.backbone import (
        build_sam2_model,
        encode_frames,
        encode_frames_compact,
        expand_compact,
        prepare_decoder_features,
        prompted_decode,
    )

    torch.manual_seed(0)
    tiny = build_sam2_model("tiny", device=device)
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1)).to(device)
    out: dict = {}
    with torch.no_grad():
        pyr = encode_frames(tiny, images)
        feats = prepare_decoder_features(tiny, pyr)
        pix = tiny._prepare_memory_conditioned_features(
            frame_idx=0, is_init_cond_frame=True, current_vision_feats=feats.vision_feats[-1:],
            current_vision_pos_embeds=feats.vision_pos_embeds[-1:], feat_sizes=feats.feat_sizes[-1:],
            output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}, num_frames=2)
        high_res = [x.permute(1, 2, 0).view(2, x.size(2), *s)
                    for x, s in zip(feats.vision_feats[:-1], feats.feat_sizes[:-1], strict=True)]
        clicks = {"point_coords": torch.tensor([[[40.0, 70.0], [90.0, 20.0]]], device=device).expand(2, -1, -1),
                  "point_labels": torch.tensor([[1, 0]], dtype=torch.int32, device=device).expand(2, -1)}
        for precision in ("fp32", "bf16"):
            ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
            with ctx:
                dec, pe = tiny.sam_mask_decoder, tiny.sam_prompt_encoder
                sparse, dense = pe(points=None, boxes=None, masks=None)
                ref_masks, ref_ious, _, _ = dec(
                    image_embeddings=pix, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse.expand(2, -1, -1),
                    dense_prompt_embeddings=dense.expand(2, -1, -1, -1), multimask_output=True, repeat_image=False,
                    high_res_features=high_res)
                got = prompted_decode(tiny, pix, high_res)
                ref = tiny._forward_sam_heads(backbone_features=pix, point_inputs=clicks, mask_inputs=None,
                                              high_res_features=high_res, multimask_output=True)
                got_clicks = prompted_decode(tiny, pix, high_res, point_inputs=clicks, multimask_output=True,
                                             no_object_masking=True)
            out[f"no_prompt_{precision}_max_diff"] = max(
                (got.low_res_masks.float() - ref_masks.float()).abs().max().item(),
                (got.ious.float() - ref_ious.float()).abs().max().item())
            out[f"clicks_{precision}_max_diff"] = max(
                (got_clicks.low_res_masks.float() - ref[0].float()).abs().max().item(),
                (got_clicks.high_res_masks.float() - ref[1].float()).abs().max().item(),
                (got_clicks.obj_ptr.float() - ref[5].float()).abs().max().item())
        compact = encode_frames_compact(tiny, images, autocast=True, dtype=torch.bfloat16)
        expanded = expand_compact(tiny, compact)
        direct = encode_frames(tiny, images, autocast=True)
        out["compact_bf16_rel_diff"] = max(
            ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
            for a, b in zip(expanded, direct, strict=True))
    return out


def build_demo_data(home: Path, clips: int | None, device: str) -> tuple[float, float, float]:
    """World -> shards -> cache under `home` (the demo's layout); returns the three step times."""
    from auralsam2.config import demo_config_path, load_config, resolve_path
    from data_specs.ingest import PALETTE_MASKS, finalize, prepare
    from data_specs.shards import write_shard
    from data_specs.synth import SynthConfig, generate_world
    from feature_cache.build import build_cache
    from feature_cache.schema import CacheSettings

    t0 = time.perf_counter()
    generate_world(home / "world", SynthConfig(seed=0, **({"clips": clips} if clips else {})), progress=False)
    t1 = time.perf_counter()
    plan = prepare("avss", home / "world" / "AVSBench", home / "ingest" / "avss")
    results = [write_shard(p, Path(plan.out) / "shards", palette_masks="avss" in PALETTE_MASKS) for p in plan.shards]
    finalize(plan, results)
    t2 = time.perf_counter()
    cfg = load_config(demo_config_path())
    ckpt = cfg.model.sam2.checkpoint
    settings = CacheSettings(sam2_config=cfg.model.sam2.config, checkpoint=str(resolve_path(ckpt)) if ckpt else None,
                             image_size=cfg.model.sam2.image_size, views=cfg.data.cache_views, device=device)
    build_cache(home / "ingest" / "avss", home / "cache" / "demo_avss", settings, progress=False)
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def train_and_test(overrides: dict, steps: int, run_dir: Path, device: str) -> dict:
    """Train the demo config with `overrides` for `steps` on `device`; J on the multi-source test split."""
    from auralsam2.config import demo_config_path, load_config
    from auralsam2.engine import build_model, train
    from auralsam2.evaluation import evaluate_source
    from feature_cache.dataset import CacheItems, open_reader, training_data

    settings = {**overrides, "train.max_steps": steps, "train.epochs": 1000, "train.device": device,
                "train.progress": False, "data.val_split": None}  # no validation: time = training
    cfg = load_config(demo_config_path(), [f"{k}={json.dumps(v)}" for k, v in settings.items()])
    reader = open_reader(cfg, device)
    data = training_data(cfg, reader)
    start = time.perf_counter()
    result = train(cfg, data, run_dir)
    train_s = time.perf_counter() - start
    model = build_model(cfg.model, reader.model).to(device)
    state = torch.load(result.last_checkpoint, map_location=device, weights_only=True)
    missing, unexpected = model.load_state_dict(state["trainable"], strict=False)
    assert not unexpected and not [k for k in missing if not k.startswith("sam2.")], (missing, unexpected)
    test = CacheItems(reader, "test", task=cfg.task, subsets=MULTI_SOURCE, training=False)
    start = time.perf_counter()
    ev = evaluate_source(model, test, "test", task=cfg.task, protocols=["avsbench_official"],
                         decodings=["iou_select"], precision=cfg.train.precision)
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line.strip()]
    losses = [h["train/seg"] for h in history if "train/seg" in h]
    return {"steps": result.steps, "train_s": train_s, "steps_per_s": result.steps / train_s,
            "eval_s": time.perf_counter() - start, "n_test": ev.n_items,
            "J": ev.value("avsbench_official", "iou_select", "J"), "F": ev.value("avsbench_official", "iou_select", "F"),
            "seg_loss_first": losses[0] if losses else None, "seg_loss_last": losses[-1] if losses else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=90.0, help="training seconds per row")
    parser.add_argument("--max-steps", type=int, default=20000)
    parser.add_argument("--demo-steps", type=int, default=120, help="also train each row for the CPU demo's budget")
    parser.add_argument("--clips", type=int, default=None, help="clips per subset of the world (default: its default)")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "torch": torch.__version__}
    report["backbone"] = check_backbone(torch.device(device))
    print(json.dumps(report["backbone"]), flush=True)
    home = Path(tempfile.mkdtemp(prefix="gpu_demo_"))
    os.environ["AURALSAM2_HOME"] = str(home)
    world_s, ingest_s, cache_s = build_demo_data(home, args.clips, device)
    report["data"] = {"world_s": world_s, "ingest_s": ingest_s, "cache_s": cache_s}
    print(json.dumps(report["data"]), flush=True)
    probe = train_and_test({}, min(20, args.max_steps), home / "runs" / "probe", device)
    steps = max(1, min(args.max_steps, int(args.budget_s * probe["steps_per_s"])))
    report["probe"] = probe
    rows = {"full": {}, "visual_only": {"model.fuser.modalities": "visual", "model.fuser.sparse_prompts": False,
                                        "model.fuser.mask_prompt": False, "loss.audiocon.mode": "off"}}
    report["rows"] = {}
    for name, overrides in rows.items():
        for n in sorted({args.demo_steps, steps}):
            report["rows"][f"{name}@{n}"] = r = train_and_test(overrides, n, home / "runs" / f"{name}_{n}", device)
            print(f"{name}@{n}: {json.dumps(r)}", flush=True)
    lines = [f"GPU demo check on {report['device']} (torch {report['torch']})", "",
             "| check | value |", "| --- | --- |"]
    lines += [f"| backbone {k} | {v:.3g} |" for k, v in report["backbone"].items()]
    lines += [f"| data {k} | {v:.1f} |" for k, v in report["data"].items()]
    lines += ["", "| row@steps | steps/s | train s | test J (multi-source) | test F | seg loss first -> last |",
              "| --- | --- | --- | --- | --- | --- |"]
    for key, r in report["rows"].items():
        lines.append(f"| {key} | {r['steps_per_s']:.1f} | {r['train_s']:.0f} | {r['J']:.3f} | {r['F']:.3f} | "
                     f"{r['seg_loss_first']:.3f} -> {r['seg_loss_last']:.3f} |")
    md = "\n".join(lines)
    print(md)
    print(json.dumps(report))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "gpu_demo.md").write_text(md + "\n")
        Path(args.out, "gpu_demo.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
