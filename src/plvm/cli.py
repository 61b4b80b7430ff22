"""The ``plvm`` command line (typer)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="plvm — tuning-free personalization of vision-language models (PLVM).", no_args_is_help=True)


def _mount_optional(name: str, module: str, help_text: str) -> None:
    """Mount a sub-app whose module may be absent in a partial install."""
    try:
        sub = __import__(module, fromlist=["app"]).app
    except ImportError as exc:  # pragma: no cover - only in broken installs
        sub = typer.Typer(help=f"{help_text} (unavailable: {exc})")
    app.add_typer(sub, name=name, help=help_text)


_mount_optional("synth", "plvm.synth.cli", "Synthesize data (AvatarWorld).")


def fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@app.command()
def version() -> None:
    """Print the plvm version."""
    import plvm

    typer.echo(plvm.__version__)


@app.command("train")
def train(
    preset: str = typer.Option("mini", help="mini | llava-1.5-7b | onevision-7b"),
    data: str = typer.Option("avatarworld", help="'avatarworld' or a training folder (train.json + images)"),
    out: Path = typer.Option(Path("runs/aligner-mini"), help="output directory (checkpoints, log, plot)"),
    steps: int = typer.Option(2000),
    batch_size: int = typer.Option(2),
    lr: float = typer.Option(1e-4),
    word_weight: float = typer.Option(10.0, help="w of Eq. 2 (Yes/No answer word weight)"),
    num_queries: Optional[int] = typer.Option(None, "--k", help="number of context tokens k (preset default)"),
    positive_ratio: float = typer.Option(0.6, help="p, share of positive recognition samples"),
    recog_to_attr: float = typer.Option(1.0, help="recognition : attribute-QA ratio"),
    hard_negative_share: float = typer.Option(0.5),
    hard_negative_distance: int = typer.Option(2),
    encoder: Optional[str] = typer.Option(None, help="reference encoder override (HF Dinov2 name/dir or 'mini')"),
    world_seed: int = typer.Option(0, help="AvatarWorld seed (identities and split)"),
    num_identities: int = typer.Option(400),
    seed: int = typer.Option(0),
    save_every: int = typer.Option(100),
    log_every: int = typer.Option(10),
    grad_accum: int = typer.Option(1),
    mixed_precision: str = typer.Option("no", help="no | fp16 | bf16 (GPU)"),
    threads: Optional[int] = typer.Option(None),
    no_resume: bool = typer.Option(False, help="start over even if OUT holds a checkpoint"),
) -> None:
    """Train the Aligner (§3.2, Eq. 2) on a frozen base LVLM; resumable."""
    from .aligner import Aligner
    from .config import get_preset
    from .injection import PersonalizedLVLM
    from .models.base import load_base
    from .pipeline import load_reference_encoder
    from .training.aligner_task import AlignerTaskConfig, AlignerTrainingTask
    from .training.data import AvatarWorldPersonalSource, FolderPersonalSource
    from .training.loop import LoopConfig, run_training

    p = get_preset(preset)
    cfg = p.aligner
    if num_queries:
        cfg = cfg.replace(num_queries=num_queries)
    if encoder:
        cfg = cfg.replace(encoder=encoder)
    if data == "avatarworld":
        from .synth.avatarworld import AvatarWorld

        world = AvatarWorld(seed=world_seed, num_identities=num_identities)
        source = AvatarWorldPersonalSource(world, seed, "train", positive_ratio, recog_to_attr,
                                           hard_negative_share, hard_negative_distance)
    else:
        source = FolderPersonalSource(data, seed)
    model, processor = load_base("mini" if preset == "mini" else p.base_model)
    lvlm = PersonalizedLVLM(model, processor, base_model=p.base_model)
    enc, ref_proc = load_reference_encoder(cfg)
    aligner = Aligner(cfg, enc)
    task = AlignerTrainingTask(lvlm, aligner, ref_proc, source, AlignerTaskConfig(batch_size, word_weight))
    loop = LoopConfig(steps=steps, lr=lr, save_every=save_every, log_every=log_every, seed=seed,
                      grad_accum=grad_accum, mixed_precision=mixed_precision, threads=threads)
    summary = run_training(task, loop, out, resume=not no_resume)
    typer.echo(json.dumps(summary, indent=2))


@app.command("train-base")
def train_base(
    out: Path = typer.Option(Path("runs/llava-mini-stage1")),
    steps: int = typer.Option(1500),
    batch_size: int = typer.Option(2),
    lr: float = typer.Option(1e-3),
    warmup_steps: int = typer.Option(50),
    world_seed: int = typer.Option(0),
    num_identities: int = typer.Option(400),
    seed: int = typer.Option(0),
    save_every: int = typer.Option(100),
    log_every: int = typer.Option(10),
    threads: Optional[int] = typer.Option(None),
    no_resume: bool = typer.Option(False),
) -> None:
    """Stage 1 of LLaVA-mini: train the projector on AvatarWorld's generic data; resumable."""
    from .injection import PersonalizedLVLM
    from .models.mini import build_llava_mini
    from .synth.avatarworld import AvatarWorld
    from .training.data import AvatarWorldGenericSource
    from .training.loop import LoopConfig, run_training
    from .training.stage1_task import ProjectorTrainingTask

    model, processor = build_llava_mini(projector=None)
    lvlm = PersonalizedLVLM(model, processor, base_model="plvm/llava-mini")
    world = AvatarWorld(seed=world_seed, num_identities=num_identities)
    task = ProjectorTrainingTask(lvlm, AvatarWorldGenericSource(world, seed), batch_size)
    loop = LoopConfig(steps=steps, lr=lr, warmup_steps=warmup_steps, save_every=save_every,
                      log_every=log_every, seed=seed, threads=threads)
    summary = run_training(task, loop, out, resume=not no_resume)
    typer.echo(json.dumps(summary, indent=2))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


if __name__ == "__main__":
    main()
