"""The Aligner's training recipe (§3.2, §4.1) over one config: what ``plvm train`` runs, callable from Python.

    from plvm.training.recipe import AlignerTrainingConfig, train_aligner
    summary = train_aligner(AlignerTrainingConfig(out=Path("runs/aligner"), steps=200))

Steps: build the frozen base and the reference encoder, the data source (AvatarWorld or a training folder)
and :class:`~plvm.training.aligner_task.AlignerTrainingTask`; on a fresh run optionally calibrate the
Aligner's outputs and anchor its context tokens to the base's head tokens (:mod:`plvm.training.head_anchor`);
then :func:`~plvm.training.loop.run_training` (resumable). The resolved config is written to ``OUT/recipe.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from plvm.recipe import ConfigError, RecipeConfig


@dataclass(frozen=True)
class AlignerTrainingConfig(RecipeConfig):
    """Everything one Aligner training run needs (the flags of ``plvm train``, same names with ``_``)."""

    preset: str = "mini"  # mini | llava-1.5-7b | onevision-7b
    data: str = "avatarworld"  # 'avatarworld' or a training folder (train.json + images)
    out: Path = Path("runs/aligner-mini")
    steps: int = 2000
    batch_size: int = 2
    lr: float = 1e-4
    warmup_steps: int = 0
    word_weight: float = 10.0  # w of Eq. 2
    num_queries: int | None = None  # k context tokens (None: the preset's)
    positive_ratio: float = 0.6  # p
    recog_to_attr: float = 1.0
    hard_negative_share: float = 0.5
    hard_negative_distance: int = 2
    portrait_query_share: float = 0.0  # AvatarWorld: share of recognition queries that are a portrait
    encoder: str | None = None  # reference encoder override (HF Dinov2 name/dir or 'mini')
    base_projector: Path | None = None  # mini only: another trained LLaVA-mini projector (+ its LoRA) as the base
    world_seed: int = 0
    num_identities: int = 400
    seed: int = 0
    save_every: int = 100
    log_every: int = 10
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16
    threads: int | None = None
    no_resume: bool = False
    init_aligner: Path | None = None
    calibrate: bool = True
    head_anchor_references: int = 0  # > 0: context tokens start as the base's pooled head tokens (mini, avatarworld)
    head_anchor_steps: int = 400
    freeze_context: bool = False  # Eq. 2 trains f_word and f_weight only (context tokens as initialised)

    def __post_init__(self) -> None:
        """Every check that needs no model, so that a bad config fails before anything loads."""
        from plvm.config import get_preset

        try:
            get_preset(self.preset)
            self.task_config()
        except KeyError as exc:
            raise ConfigError(str(exc.args[0])) from None
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.data != "avatarworld" and self.portrait_query_share:
            raise ConfigError("portrait_query_share (--portrait-query-share) needs data 'avatarworld'")
        if not 0.0 <= self.portrait_query_share <= 1.0:
            raise ConfigError(f"portrait_query_share must be in [0, 1], got {self.portrait_query_share}")
        if self.data != "avatarworld" and self.head_anchor_references:
            raise ConfigError("head_anchor_references (--head-anchor-references) needs data 'avatarworld' (head boxes)")
        if self.init_aligner is not None and not self.init_aligner.exists():
            raise ConfigError(f"init_aligner (--init-aligner): no such file or checkpoint: {self.init_aligner}")
        if self.base_projector is not None and self.preset != "mini":
            raise ConfigError("base_projector (--base-projector) is for the mini preset")
        if self.base_projector is not None and not self.base_projector.is_file():
            raise ConfigError(f"base_projector (--base-projector): no such file: {self.base_projector}")
        if self.num_queries is not None and self.num_queries < 1:
            raise ConfigError(f"num_queries (--k) must be >= 1, got {self.num_queries}")

    def task_config(self) -> Any:
        from plvm.training.aligner_task import AlignerTaskConfig

        return AlignerTaskConfig(self.batch_size, self.word_weight, freeze_context=self.freeze_context)

    def loop_config(self) -> Any:
        from plvm.training.loop import LoopConfig

        return LoopConfig(
            steps=self.steps,
            lr=self.lr,
            warmup_steps=self.warmup_steps,
            save_every=self.save_every,
            log_every=self.log_every,
            seed=self.seed,
            grad_accum=self.grad_accum,
            mixed_precision=self.mixed_precision,
            threads=self.threads,
        )


def train_aligner(config: AlignerTrainingConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the recipe; returns :func:`~plvm.training.loop.run_training`'s summary.

    Raises :class:`~plvm.recipe.ConfigError` for what the config or its files get wrong (e.g. a resume on another
    base)."""
    import torch

    from plvm.aligner import Aligner
    from plvm.config import get_preset
    from plvm.injection import PersonalizedLVLM
    from plvm.models.base import load_base, mini_base_revision
    from plvm.pipeline import IncompatibleAlignerError, check_aligner_base, load_aligner_weights, load_reference_encoder
    from plvm.training.aligner_task import AlignerTrainingTask
    from plvm.training.data import AvatarWorldPersonalSource, FolderPersonalSource
    from plvm.training.loop import latest_checkpoint, run_training

    c = config
    p = get_preset(c.preset)
    cfg = p.aligner
    if c.num_queries:
        cfg = cfg.replace(num_queries=c.num_queries)
    if c.encoder:
        cfg = cfg.replace(encoder=c.encoder)
    world = None
    if c.data == "avatarworld":
        from plvm.synth.avatarworld import AvatarWorld

        world = AvatarWorld(seed=c.world_seed, num_identities=c.num_identities)
        source: Any = AvatarWorldPersonalSource(
            world,
            c.seed,
            "train",
            c.positive_ratio,
            c.recog_to_attr,
            c.hard_negative_share,
            c.hard_negative_distance,
            c.portrait_query_share,
        )
    else:
        source = FolderPersonalSource(c.data, c.seed)
    if c.preset == "mini":
        model, processor = load_base("mini", projector=c.base_projector)
        revision = mini_base_revision(c.base_projector)
    else:
        model, processor = load_base(p.base_model)
        revision = None
    lvlm = PersonalizedLVLM(model, processor, base_model=p.base_model, base_revision=revision)
    previous = None if c.no_resume else latest_checkpoint(c.out)  # a resume loads its weights: no init steps
    if previous is not None:
        try:  # a run resumed on another base would record the new revision on weights trained on the old one
            check_aligner_base(previous, lvlm)
        except IncompatibleAlignerError as exc:
            raise ConfigError(f"cannot resume {c.out}: {exc}") from None
    enc, ref_proc = load_reference_encoder(cfg)
    torch.manual_seed(c.seed)  # a fresh Aligner's initial weights are a function of the seed
    aligner = Aligner(cfg, enc)
    if c.init_aligner is not None:
        check_aligner_base(c.init_aligner, lvlm, allow_mismatch=True)  # a warm start from another base: warn
        load_aligner_weights(aligner, c.init_aligner)
    try:  # e.g. an Aligner whose width does not fit the base
        task = AlignerTrainingTask(lvlm, aligner, ref_proc, source, c.task_config())
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    c.save(c.out / "recipe.json")
    fresh = c.init_aligner is None and previous is None
    if fresh and c.calibrate:
        refs = [ex.reference for ex in source.examples(10**6, 32)]  # a batch index the run never reaches
        factors = aligner.calibrate(
            task.reference_pixels(refs),
            word_norm=float(model.get_input_embeddings().weight.float().norm(dim=-1).mean()),
            weight_norm=float(model.get_output_embeddings().weight.float().norm(dim=-1).mean()),
        )
        log("Aligner outputs calibrated: " + ", ".join(f"{k} x{v:.3f}" for k, v in factors.items()))
    if fresh and c.head_anchor_references > 0 and world is not None:
        import numpy as np

        from plvm.models.llava_mini.anchor import portrait_head_box
        from plvm.training.head_anchor import train_aligner_head_anchor

        rng = np.random.default_rng([c.seed, 778])
        pool = world.split("train")
        people = [pool[int(i)] for i in rng.integers(len(pool), size=c.head_anchor_references)]
        references = [world.render_reference(person, rng_or_seed=rng) for person in people]
        samples = [(img, portrait_head_box(person, img.width)) for img, person in zip(references, people)]
        stats = train_aligner_head_anchor(
            aligner,
            model,
            processor.image_processor,
            task.reference_pixels,
            samples,
            c.head_anchor_steps,
            seed=c.seed,
            log=log,
        )
        (c.out / "head_anchor.json").write_text(json.dumps(stats, indent=2))
    summary = run_training(task, c.loop_config(), c.out, resume=not c.no_resume)
    log(json.dumps(summary, indent=2))
    return summary
