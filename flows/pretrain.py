"""The reproducible recipe behind the committed tiny-SAM2 checkpoint (`auralsam2 pretrain-tiny-sam2`).

Writes the checkpoint in the official SAM2 format (`{"model": state_dict}`) and a recipe JSON
beside it: the arguments, the held-out IoU (prompted frame and frames reached through memory), the
sha256, torch version and wall time. Re-running with the same arguments on the same machine and
torch build reproduces the same weights (fixed seeds, deterministic CPU kernels, one thread).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from auralsam2.utils.files import atomic_torch_save, atomic_write_json, read_json
from auralsam2.utils.hashing import sha256_file
from data_specs.synth_objects import object_clip

ASSETS = Path(__file__).resolve().parent.parent / "auralsam2" / "assets"
ASSET = ASSETS / "sam2_tiny_synth.pt"
VGGISH_ASSET = ASSETS / "vggish_tiny_synth.pth"
TEXT_ASSET = ASSETS / "text_tiny_synth"
EVAL_STREAM = 999  # held-out clip stream (training uses stream `seed`)


def check_recipe_outputs(out: Path, recipe: Path) -> None:
    """Refuse (one line, before any work) to overwrite `out` or its recipe `recipe` unless an earlier
    run of these commands wrote them: an existing recipe must be ours, and `out` needs its recipe."""
    from auralsam2.utils.outputs import OutputFolderError

    def ours(path: Path) -> bool:
        try:
            record = read_json(path, "a recipe record", "")
        except (OSError, ValueError):
            return False
        return isinstance(record, dict) and str(record.get("command", "")).startswith("auralsam2 ")

    for path in (out, recipe):
        if (path.exists() or path.is_symlink()) and not (recipe.is_file() and not recipe.is_symlink() and ours(recipe)):
            raise OutputFolderError(f"{path} exists and was not written by this command (no recipe {recipe.name} "
                                    "of ours beside it); choose another --out (nothing was changed)")


def _clips(stream: int, image_size: int, image_steps: int = 0) -> Iterator:
    """Pretraining clips: `image_steps` single frames first (cheap: learns to segment), then 5-frame
    clips (learns to track through memory)."""
    from auralsam2.pretrain.sam2 import make_clip

    rng = np.random.default_rng([stream, 1])
    index = 0
    while True:
        clip = object_clip(stream, index, n_frames=1 if index < image_steps else 5)
        index += 1
        yield make_clip(clip.frames, clip.masks, image_size, rng)


def run_pretrain_tiny_sam2(out: Path | None = None, steps: int = 6000, seed: int = 0, lr: float = 3e-3,
                           image_size: int = 128, eval_clips: int = 64, threads: int = 1,
                           config: str = "tiny", image_fraction: float = 0.6, init: Path | None = None,
                           log=print) -> dict:
    from auralsam2.backbone import build_sam2_model
    from auralsam2.pretrain.sam2 import evaluate_prompted, pretrain_sam2

    out = Path(out) if out else ASSET
    check_recipe_outputs(out, out.with_suffix(".json"))
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    # `init`: continue from an earlier result of this recipe (a second stage, e.g. video-only steps);
    # its own recipe JSON, if any, is kept in this one's record so the chain stays reproducible.
    model = build_sam2_model(config, checkpoint=str(init) if init else None, image_size=image_size)
    init_record = None
    if init:
        init_json = Path(init).with_suffix(".json")
        init_record = {"checkpoint": str(init), "sha256": sha256_file(init),
                       "recipe": read_json(init_json, "the recipe record", f"write {init} again")
                       if init_json.is_file() else None}
    started = time.time()
    history = pretrain_sam2(
        model, _clips(seed, image_size, int(image_fraction * steps)), steps=steps, lr=lr,
        on_log=lambda step, stats: log(f"step {step}/{steps}: loss {stats['total']:.3f}, "
                                       f"IoU prompted {stats['cond_iou']:.3f}, tracked {stats['tracked_iou']:.3f}"),
    )
    held_out = _clips(EVAL_STREAM, image_size)
    evaluation = evaluate_prompted(model, [next(held_out) for _ in range(eval_clips)])
    # Stored in float16 to keep the committed file small (~5.7 MB); it loads into the fp32 model
    # through the ordinary strict SAM2 checkpoint path (load_state_dict casts).
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    atomic_torch_save({"model": state}, out)
    record = {
        "checkpoint": str(out),
        "sha256": sha256_file(out),
        "bytes": out.stat().st_size,
        "command": f"auralsam2 pretrain-tiny-sam2 --steps {steps} --seed {seed} --lr {lr} "
                   f"--image-size {image_size} --eval-clips {eval_clips} --threads {threads} --config {config} "
                   f"--image-fraction {image_fraction}" + (f" --init {init}" if init else ""),
        "image_fraction": image_fraction,
        "init": init_record,
        "stored_dtype": "float16 (trained in float32)",
        "config": config, "image_size": image_size, "steps": steps, "seed": seed, "lr": lr,
        "eval": evaluation, "history": history[-5:],
        "torch": torch.__version__, "machine": platform.machine(), "wall_s": round(time.time() - started, 1),
    }
    atomic_write_json(out.with_suffix(".json"), record, sort_keys=False)
    return record


def _audio_batches(stream: int, clips_per_batch: int) -> Iterator:
    """(examples (B, 1, 96, 64), labels (B, K)) from synthetic mixtures; each stereo channel is one example."""
    from auralsam2.audio import waveform_to_examples
    from data_specs.synth_objects import audio_clip

    index = 0
    while True:
        examples, labels = [], []
        for _ in range(clips_per_batch):
            clip = audio_clip(stream, index)
            index += 1
            x = waveform_to_examples(clip.pcm.astype(np.float32) / 32768.0, 16000, clip.labels.shape[0])
            t, ch = x.shape[:2]
            examples.append(x.reshape(t * ch, 1, 96, 64))
            labels.append(torch.from_numpy(np.repeat(clip.labels, ch, axis=0)))
        yield torch.cat(examples), torch.cat(labels)


def run_pretrain_tiny_vggish(out: Path | None = None, steps: int = 600, seed: int = 0, lr: float = 3e-3,
                             clips_per_batch: int = 2, embedding_dim: int = 16, eval_batches: int = 16,
                             threads: int = 1, log=print) -> dict:
    """Train the demo's tiny VGGish as a sound-event classifier on synthetic mixtures; save it in the
    torchvggish key layout (what `vggish-10086976.pth` uses) plus a recipe JSON."""
    from auralsam2.audio import VGGish, VGGishConfig
    from auralsam2.pretrain.vggish import evaluate_vggish, pretrain_vggish
    from data_specs.synth_world import CATALOG

    out = Path(out) if out else VGGISH_ASSET
    check_recipe_outputs(out, out.with_suffix(".json"))
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    vggish = VGGish(VGGishConfig.tiny(embedding_dim=embedding_dim))
    started = time.time()
    history, head = pretrain_vggish(
        vggish, _audio_batches(seed, clips_per_batch), steps, num_classes=len(CATALOG), lr=lr,
        on_log=lambda step, st: log(f"step {step}/{steps}: loss {st['loss']:.4f}, exact match {st['exact_match']:.3f}"),
    )
    held_out = _audio_batches(EVAL_STREAM, clips_per_batch)
    evaluation = evaluate_vggish(vggish, head, [next(held_out) for _ in range(eval_batches)])
    atomic_torch_save(vggish.state_dict(), out, seal=False)  # the torchvggish format, loaded strictly elsewhere
    record = {
        "checkpoint": str(out), "sha256": sha256_file(out), "bytes": out.stat().st_size,
        "command": f"auralsam2 pretrain-tiny-vggish --steps {steps} --seed {seed} --lr {lr} "
                   f"--clips-per-batch {clips_per_batch} --embedding-dim {embedding_dim} --threads {threads}",
        "vggish": vggish.config.model_dump(), "categories": list(CATALOG), "eval": evaluation,
        "history": history[-5:], "torch": torch.__version__, "machine": platform.machine(),
        "wall_s": round(time.time() - started, 1),
    }
    atomic_write_json(out.with_suffix(".json"), record, sort_keys=False)
    return record


def run_make_tiny_text_encoder(out: Path | None = None, seed: int = 0, hidden_size: int = 32, layers: int = 2,
                               vocab_size: int = 400, pretrain_steps: int = 2000) -> dict:
    """Write the demo's text encoder (a tiny RoBERTa whose byte-level BPE tokenizer is trained on
    every expression the synthetic Ref-AVS world writes, pretrained as a masked LM on them and then
    frozen) as a `save_pretrained` folder, plus a recipe JSON beside it with the sha256 of each file."""
    from auralsam2.pretrain.text import pretrain_masked_lm, save_text_encoder
    from auralsam2.text import text_encoder_identity, tiny_text_encoder
    from data_specs.synth_plans import expression_corpus

    out = Path(out) if out else TEXT_ASSET
    check_recipe_outputs(out, out.with_name(out.name + ".json"))
    started = time.time()
    corpus = expression_corpus()
    encoder = tiny_text_encoder(hidden_size=hidden_size, layers=layers, heads=2, vocab_size=vocab_size,
                                corpus=corpus, seed=seed)
    losses = pretrain_masked_lm(encoder, corpus, pretrain_steps, seed=seed) if pretrain_steps else []
    save_text_encoder(encoder, out)
    weights = (f"masked-LM pretrained for {pretrain_steps} steps on the corpus, then frozen"
               if pretrain_steps else "random (frozen)")
    record = {
        "folder": out.name, "files_sha256": text_encoder_identity(out),
        "command": f"auralsam2 make-tiny-text-encoder --seed {seed} --hidden-size {hidden_size} --layers {layers} "
                   f"--vocab-size {vocab_size} --pretrain-steps {pretrain_steps}",
        "corpus": "data_specs.synth_plans.expression_corpus()", "weights": weights, "mlm_loss": losses,
        "torch": torch.__version__, "machine": platform.machine(), "wall_s": round(time.time() - started, 1),
    }
    atomic_write_json(out.with_name(out.name + ".json"), record, sort_keys=False)
    return record
