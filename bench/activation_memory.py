"""How much memory a training clip keeps for its backward pass, by module: what sizes
`train.clips_per_step` on a GPU, measured on any device (a CPU will do).

Runs one training forward (fuser + SAM2 tracking with memory + the released loss) on a random
pyramid, counting every tensor autograd saves for backward once (by storage) and charging it to
the innermost module running when it was saved. fp32; bf16 autocast keeps less (most saved matmul
inputs are bf16 copies).

    python -m bench.activation_memory --config sam2_hiera_b+ --frames 2   # 1024^2: ~11 GB RAM, ~1 min
    python -m bench.activation_memory --config tiny --image-size 128 --smoke
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import torch


def saved_for_backward(config: str, frames: int, image_size: int | None = None, smoke: bool = False,
                       checkpoint_fuser_blocks: bool = False) -> dict:
    """`{"total_bytes": int, "by_module": Counter}` for one clip of `frames` frames (with
    `checkpoint_fuser_blocks`, as `train.checkpoint_fuser_blocks` trains: a checkpointed block
    keeps only its input, counted where the block was called)."""
    from auralsam2.backbone import build_sam2_model, encode_frames
    from auralsam2.losses import AudioConConfig
    from auralsam2.model import clip_loss
    from bench.gpu_train_bench import trainable_model

    torch.manual_seed(0)
    sam2 = build_sam2_model(config, device=torch.device("cpu"), image_size=image_size)
    size = int(sam2.image_size)
    model = trainable_model(sam2, smoke).train()
    model.fuser.checkpoint_blocks = checkpoint_fuser_blocks
    with torch.no_grad():
        pyramid = tuple(encode_frames(sam2, torch.randn(frames, 3, size, size)))

    running = ["(outside any module)"]
    hooks = []
    for name, module in model.named_modules():
        hooks.append(module.register_forward_pre_hook(lambda m, i, name=name: running.append(name or "(model)")))
        hooks.append(module.register_forward_hook(lambda m, i, o: running.pop() and None))
    seen: set[int] = set()
    by_module: Counter = Counter()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            by_module[running[-1]] += storage.nbytes()
        return tensor

    masks = torch.zeros(frames, size, size, dtype=torch.bool)
    masks[:, size // 4 : size // 2, size // 5 : size // 2] = True
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = model.forward_clip(pyramid, torch.randn(frames, 2, 96, 64), cond_frame=frames // 2)
            clip_loss(out, masks, range(frames), AudioConConfig(mode="official"))["total"]
    finally:
        for hook in hooks:
            hook.remove()
    return {"config": config, "image_size": size, "frames": frames, "total_bytes": sum(by_module.values()),
            "by_module": by_module}


def by_part(by_module: Counter, depth: int = 2) -> Counter:
    """The counts summed over the first `depth` parts of the module names (fuser.f_blocks, ...)."""
    parts: Counter = Counter()
    for name, size in by_module.items():
        parts[".".join(name.split(".")[:depth])] += size
    return parts


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="sam2_hiera_b+", help="SAM2 config")
    parser.add_argument("--frames", type=int, default=2, help="frames of the clip")
    parser.add_argument("--image-size", type=int, default=None, help="input size (default: the config's, 1024)")
    parser.add_argument("--smoke", action="store_true", help="a fuser and VGGish sized for the tiny SAM2")
    parser.add_argument("--checkpoint-fuser-blocks", action="store_true",
                        help="recompute the fuser's visual blocks in backward (train.checkpoint_fuser_blocks)")
    args = parser.parse_args(argv)
    result = saved_for_backward(args.config, args.frames, args.image_size, args.smoke, args.checkpoint_fuser_blocks)
    total = result["total_bytes"]
    print(f"{args.config} at {result['image_size']}^2, {args.frames} frames, fp32"
          f"{', fuser blocks checkpointed' if args.checkpoint_fuser_blocks else ''}: {total / 2**30:.2f} GiB saved for "
          f"backward ({total / args.frames / 2**30:.2f} GiB per frame)")
    for name, size in by_part(result["by_module"]).most_common(8):
        print(f"  {size / 2**20:10.0f} MiB  {size / total:6.1%}  {name}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
