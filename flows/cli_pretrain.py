"""The `auralsam2` commands behind the demo's small committed models: `pretrain-tiny-sam2`,
`pretrain-tiny-vggish`, `make-tiny-text-encoder` (the recipes themselves are in `flows/pretrain.py`)."""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["COMMANDS"]


def pretrain_tiny_sam2(
    out: Path = typer.Option(None, help="Checkpoint to write (default: the committed asset "
                             "auralsam2/assets/sam2_tiny_synth.pt and its recipe .json beside it)."),
    steps: int = typer.Option(6000, min=1, help="Training clips (one clip, all its objects, per step)."),
    seed: int = typer.Option(0, help="Seed of the model init, the clip stream and the prompts."),
    lr: float = typer.Option(3e-3, help="Peak AdamW learning rate (cosine schedule, 100 warm-up steps)."),
    image_size: int = typer.Option(128, help="Model input size of the tiny SAM2."),
    eval_clips: int = typer.Option(64, help="Held-out clips for the prompted/tracked IoU report."),
    threads: int = typer.Option(1, help="torch threads (1 makes the run reproducible bit for bit; 0: torch's default)."),
    config: str = typer.Option("tiny", help="SAM2 config to train (`tiny`, or the wider `synth`)."),
    image_fraction: float = typer.Option(0.6, min=0, max=1, help="Share of steps on single frames before the "
                                         "5-frame video steps (segmenting is learnt cheaply on images first)."),
    init: Path = typer.Option(None, exists=True, dir_okay=False, help="Start from this checkpoint (a second "
                              "stage of the recipe, e.g. more video steps) instead of random weights; "
                              "its recipe JSON is kept in the new one."),
) -> None:
    """Pretrain the demo's small SAM2 on synthetic-world clips with clicks and boxes, as SAM2 is trained.

    The demo loads the result through the real SAM2 checkpoint path as its frozen SAM2. The recipe
    (this command's arguments), the held-out IoU and the sha256 are written next to the checkpoint.
    """
    from flows.pretrain import run_pretrain_tiny_sam2

    record = run_pretrain_tiny_sam2(out=out, steps=steps, seed=seed, lr=lr, image_size=image_size,
                                    eval_clips=eval_clips, threads=threads, config=config,
                                    image_fraction=image_fraction, init=init)
    typer.echo(f"wrote {record['checkpoint']} (sha256 {record['sha256'][:16]}...)")
    typer.echo(f"held-out IoU: prompted frame {record['eval']['cond_iou']:.3f}, "
               f"tracked frames {record['eval']['tracked_iou']:.3f}")


def pretrain_tiny_vggish(
    out: Path = typer.Option(None, help="Weights to write (default: the committed asset "
                             "auralsam2/assets/vggish_tiny_synth.pth and its recipe .json beside it)."),
    steps: int = typer.Option(1200, min=1, help="Training batches."),
    seed: int = typer.Option(0, help="Seed of the init and of the clip stream."),
    lr: float = typer.Option(3e-3, help="Peak AdamW learning rate (cosine schedule)."),
    clips_per_batch: int = typer.Option(2, min=1, help="10-second mixtures per batch (20 examples x 2 channels)."),
    embedding_dim: int = typer.Option(16, min=1, help="Embedding size per audio channel."),
    threads: int = typer.Option(1, help="torch threads (1 makes the run reproducible bit for bit)."),
) -> None:
    """Pretrain the demo's tiny VGGish as a sound-event classifier on synthetic mixtures.

    The stand-in for the AudioSet-pretrained VGGish (`vggish-10086976.pth`) that real runs load:
    saved in the same key layout, loaded through the same `model.vggish_checkpoint` path.
    """
    from flows.pretrain import run_pretrain_tiny_vggish

    record = run_pretrain_tiny_vggish(out=out, steps=steps, seed=seed, lr=lr, clips_per_batch=clips_per_batch,
                                      embedding_dim=embedding_dim, threads=threads)
    typer.echo(f"wrote {record['checkpoint']} (sha256 {record['sha256'][:16]}...)")
    typer.echo(f"held-out: exact match {record['eval']['exact_match']:.3f}, "
               f"per-label accuracy {record['eval']['label_accuracy']:.3f}")


def make_tiny_text_encoder(
    out: Path = typer.Option(None, help="Folder to write (default: the committed asset auralsam2/assets/"
                             "text_tiny_synth and its recipe .json beside it)."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
    hidden_size: int = typer.Option(32, min=2, help="Hidden size (the fuser's model.fuser.text_dim)."),
    layers: int = typer.Option(2, min=1, help="Transformer layers."),
    vocab_size: int = typer.Option(400, min=50, help="Byte-level BPE vocabulary size."),
    pretrain_steps: int = typer.Option(2000, min=0, help="Masked-LM pretraining steps on the expressions before "
                                       "freezing, as distilroberta-base is pretrained (0 = random weights)."),
) -> None:
    """Write the synthetic Ref-AVS demo's frozen text encoder as a Hugging Face folder.

    A tiny RoBERTa with a byte-level BPE tokenizer trained on the synthetic world's expressions,
    pretrained as a masked language model on them (a few seconds) and frozen; the demo loads it
    through the same `model.text_encoder` path (a `save_pretrained` folder) as the released
    distilroberta-base.
    """
    from flows.pretrain import run_make_tiny_text_encoder

    record = run_make_tiny_text_encoder(out=out, seed=seed, hidden_size=hidden_size, layers=layers,
                                        vocab_size=vocab_size, pretrain_steps=pretrain_steps)
    typer.echo(f"wrote {record['folder']} ({', '.join(record['files_sha256'])})")
    if record["mlm_loss"]:
        typer.echo(f"masked-LM loss {record['mlm_loss'][0]} -> {record['mlm_loss'][-1]}")


COMMANDS = {"pretrain-tiny-sam2": pretrain_tiny_sam2, "pretrain-tiny-vggish": pretrain_tiny_vggish,
            "make-tiny-text-encoder": make_tiny_text_encoder}
