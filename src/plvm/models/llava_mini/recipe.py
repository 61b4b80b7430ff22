"""LLaVA-mini's base training recipe (stage 0 + stage 1) over one config: what ``plvm train-base`` runs.

    from plvm.models.llava_mini.recipe import BaseTrainingConfig, train_base
    summary = train_base(BaseTrainingConfig(out=Path("runs/base"), lora_r=16, freeze_projector=True, ...))

Steps: build LLaVA-mini (projector from ``init_projector`` or fresh, read from the tower layer(s) the run
keeps); on a fresh projector optionally calibrate it and anchor it to word embeddings (stage 0,
:mod:`~plvm.models.llava_mini.anchor`); optionally shape it for identity
(:mod:`~plvm.models.llava_mini.identity_shaping`); then stage 1 (:class:`~plvm.models.llava_mini.stage1_task.
ProjectorTrainingTask` on AvatarWorld's generic data, resumable). The resolved config is written to
``OUT/recipe.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from plvm.recipe import ConfigError, RecipeConfig


@dataclass(frozen=True)
class BaseTrainingConfig(RecipeConfig):
    """Everything one LLaVA-mini base training run needs (the flags of ``plvm train-base``, with ``_``)."""

    out: Path = Path("runs/llava-mini-stage1")
    steps: int = 1500
    batch_size: int = 2
    lr: float = 1e-3
    warmup_steps: int = 50
    world_seed: int = 0
    num_identities: int = 400
    seed: int = 0
    save_every: int = 100
    log_every: int = 10
    threads: int | None = None
    no_resume: bool = False
    lora_r: int = 0  # rank of the LM LoRA (0: projector only)
    lora_alpha: int = 32
    mix: str = "0.4,0.4,0.2"  # caption, visual QA, same-person[, image-prompt recognition]
    turns: int = 1  # questions per visual-QA dialogue
    init_projector: Path | None = None
    mixed_precision: str = "no"  # no | bf16 | fp16
    calibrate: bool = True
    anchor_images: int = 0  # stage 0 on a fresh projector (0: off)
    anchor_steps: int = 400
    anchor_regions: str = "person"  # 'person' or 'parts'
    freeze_projector: bool = False
    word_weight: float = 1.0  # Eq. 2's w on Yes/No answer words
    same_portrait_share: float = 0.5
    described_share: float = 0.0
    image_prompt_pairs: bool = False  # image-prompt questions as twins differing only in the query
    attention_match: str | None = None  # 'layer,head' of the LM head taught to compare people, e.g. '8,0'
    attention_report: str | None = None  # 'layer,head' of the head taught to report it at the answer, e.g. '20,0'
    attention_match_weight: float = 1.0
    vqa_kinds: str | None = None  # e.g. 'hair_color=3,glasses=2,age=1'
    described_properties: str | None = None  # e.g. 'hair_color,hair_style,glasses'
    vision_feature_layer: str | None = None  # e.g. '8' or '8,-1'
    init_lora: Path | None = None
    shape_identity_steps: int = 0  # identity shaping before stage 1 (0: off)
    shape_identity_weight: float = 0.3

    def __post_init__(self) -> None:
        """Every check that needs no model (files named are checked to exist)."""
        from plvm.models.llava_mini.anchor import REGIONS

        self.mix_weights()
        self.open_kinds()
        self.properties()
        if self.anchor_regions not in REGIONS:
            raise ConfigError(f"anchor_regions (--anchor-regions) must be one of {', '.join(REGIONS)}")
        self.match_head()
        if self.shape_identity_steps < 0 or self.shape_identity_weight < 0:
            raise ConfigError("shape_identity_steps and shape_identity_weight must be >= 0")
        for name in ("init_projector", "init_lora"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ConfigError(f"{name} (--{name.replace('_', '-')}): no such file: {path}")

    def mix_weights(self) -> tuple[float, ...]:
        try:
            weights = tuple(float(x) for x in self.mix.split(","))
        except ValueError:
            weights = ()
        if len(weights) not in (3, 4) or min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError(
                f"mix (--mix) needs three or four non-negative numbers, e.g. 0.2,0.5,0.3 or "
                f"0.1,0.4,0.1,0.4; got {self.mix!r}"
            )
        return weights

    def match_head(self) -> Any:
        """``attention_match`` (+ ``attention_report``) as a validated
        :class:`~plvm.models.llava_mini.stage1_task.AttentionMatch` (or ``None``)."""
        if self.attention_match is None:
            if self.attention_report is not None:
                raise ConfigError("attention_report (--attention-report) needs attention_match (--attention-match)")
            return None
        from plvm.models.llava_mini.stage1_task import AttentionMatch

        try:
            layer, head = (int(x) for x in self.attention_match.split(","))
            report = {}
            if self.attention_report is not None:
                answer_layer, answer_head = (int(x) for x in self.attention_report.split(","))
                report = {"answer_layer": answer_layer, "answer_head": answer_head}
            return AttentionMatch(layer=layer, head=head, weight=self.attention_match_weight, **report)
        except ValueError as exc:
            raise ConfigError(
                "attention_match / attention_report (--attention-match / --attention-report) need 'layer,head' of LM "
                "attention heads (e.g. 8,0 and 20,0; the report head's layer above the compare head's) and "
                f"attention_match_weight (--attention-match-weight) a positive weight: {exc}"
            ) from None

    def open_kinds(self) -> dict[str, float] | None:
        """``vqa_kinds`` as validated weights (``None`` stays ``None``)."""
        if self.vqa_kinds is None:
            return None
        from plvm.synth.qa import open_kind_weights

        try:
            return open_kind_weights(self.vqa_kinds)
        except ValueError as exc:
            raise ConfigError(f"vqa_kinds (--vqa-kinds): {exc}") from None

    def properties(self) -> list[str] | None:
        if not self.described_properties:
            return None
        from plvm.synth.qa import check_described_properties

        try:
            return check_described_properties([x.strip() for x in self.described_properties.split(",")])
        except ValueError as exc:
            raise ConfigError(f"described_properties (--described-properties): {exc}") from None


def resolve_feature_layer(text: str | None, init_projector: Path | None, resumed: Path | None) -> Any:
    """The tower layer(s) to build LLaVA-mini with: a resumed run or an ``init_projector`` keeps the layer it was
    trained on (a different explicit value is a :class:`ConfigError`, except a list that contains an init
    projector's single layer: it is widened to read them all); ``None`` → the default."""
    from plvm.models.llava_mini.assembly import feature_layer_str, parse_feature_layer, projector_metadata, widens

    try:
        wanted = parse_feature_layer(text) if text is not None else None
    except ValueError as exc:
        raise ConfigError(f"vision_feature_layer (--vision-feature-layer): {exc}") from None
    recorded, source = None, None
    if resumed is not None:
        task = json.loads((resumed / "state.json").read_text())["task"]
        recorded, source = task.get("vision_feature_layer", "-1"), f"the run resumed from {resumed}"
    elif init_projector is not None:
        recorded, source = projector_metadata(init_projector).get("vision_feature_layer", "-1"), str(init_projector)
    if recorded is None:
        return wanted
    if resumed is None and widens(parse_feature_layer(recorded), wanted):  # an init projector read as one of
        return wanted  # several layers (identity_shaping)
    if wanted is not None and feature_layer_str(wanted) != recorded:
        raise ConfigError(
            f"vision_feature_layer (--vision-feature-layer): {source} reads vision feature layer {recorded}, not {text}"
        )
    return parse_feature_layer(recorded)


def train_base(config: BaseTrainingConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the recipe; returns :func:`~plvm.training.loop.run_training`'s summary."""
    from plvm.config import MINI_BASE_MODEL
    from plvm.injection import PersonalizedLVLM
    from plvm.models.llava_mini.assembly import (
        build_llava_mini,
        parse_feature_layer,
        projector_lora,
        projector_metadata,
        widens,
    )
    from plvm.models.llava_mini.lora import MiniLoraConfig, load_lora_state_dict, read_lora
    from plvm.models.llava_mini.stage1_data import AvatarWorldGenericSource
    from plvm.models.llava_mini.stage1_task import ProjectorTrainingTask
    from plvm.synth.avatarworld import AvatarWorld
    from plvm.training.loop import LoopConfig, latest_checkpoint, run_training

    c = config
    lora = MiniLoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha) if c.lora_r > 0 else None
    init_lora = c.init_lora if c.init_lora is not None or c.init_projector is None else projector_lora(c.init_projector)
    lora_tensors = None
    if init_lora is not None:  # continue that LoRA (not stack a new one on it): checked before the model loads
        lora_tensors, trained_with = read_lora(init_lora)
        if trained_with != lora:
            raise ConfigError(
                f"{init_lora} was trained with LoRA r={trained_with.r}, alpha={trained_with.lora_alpha}:"
                " pass the same lora_r/lora_alpha (--lora-r/--lora-alpha)"
            )
    resumed = None if c.no_resume else latest_checkpoint(c.out)
    layer = resolve_feature_layer(c.vision_feature_layer, c.init_projector, resumed)
    widen = c.init_projector is not None and widens(
        parse_feature_layer(projector_metadata(c.init_projector).get("vision_feature_layer", "-1")), layer
    )
    model, processor = build_llava_mini(
        projector=None if widen else c.init_projector, lora=False, vision_feature_layer=layer
    )
    if widen:
        from plvm.models.llava_mini.identity_shaping import load_widened_projector

        load_widened_projector(model, c.init_projector)
    lvlm = PersonalizedLVLM(model, processor, base_model=MINI_BASE_MODEL)
    world = AvatarWorld(seed=c.world_seed, num_identities=c.num_identities)
    c.save(c.out / "recipe.json")
    fresh = c.init_projector is None and resumed is None  # init steps; a resume loads its weights
    if fresh and c.calibrate:
        import numpy as np

        from plvm.models.llava_mini.assembly import calibrate_projector

        rng = np.random.default_rng([c.seed, 10**6])  # 16 training scenes, disjoint from the sample stream
        images = [world.sample_scene(rng, "train").image for _ in range(16)]
        stats = calibrate_projector(model, processor.image_processor(images, return_tensors="pt")["pixel_values"])
        log(f"projector calibrated on 16 scenes: {stats}")
    if fresh and c.anchor_images > 0:
        from plvm.models.llava_mini.anchor import train_anchor

        stats = train_anchor(
            model,
            processor.tokenizer,
            processor.image_processor,
            lambda r: world.sample_scene(r, "train"),
            n_images=c.anchor_images,
            steps=c.anchor_steps,
            seed=c.seed,
            log=log,
            regions=c.anchor_regions,
        )
        (c.out / "anchor.json").write_text(json.dumps(stats, indent=2))
    if c.shape_identity_steps > 0 and resumed is None:  # a resumed run's checkpoint holds the shaped projector
        from plvm.models.llava_mini.identity_shaping import (
            IdentityShapingConfig,
            collect_tower_features,
            shape_projector,
        )

        shaping = IdentityShapingConfig(
            steps=c.shape_identity_steps, identity_weight=c.shape_identity_weight, seed=c.seed
        )
        cache = collect_tower_features(model, processor.image_processor, world, shaping, log=log)
        stats = shape_projector(model, cache, shaping, log=log)
        del cache
        (c.out / "identity_shaping.json").write_text(json.dumps({"config": asdict(shaping), "final": stats}, indent=2))
    source = AvatarWorldGenericSource(
        world,
        c.seed,
        mix=c.mix_weights(),
        turns=c.turns,
        same_portrait_share=c.same_portrait_share,
        described_share=c.described_share,
        open_kinds=c.open_kinds(),
        described_properties=c.properties(),
        image_prompt_pairs=c.image_prompt_pairs,
    )
    task = ProjectorTrainingTask(
        lvlm,
        source,
        c.batch_size,
        lora,
        train_projector=not c.freeze_projector,
        word_weight=c.word_weight,
        attention_match=c.match_head(),
    )
    if lora_tensors is not None:
        load_lora_state_dict(task.tuner, lora_tensors)
    loop = LoopConfig(
        steps=c.steps,
        lr=c.lr,
        warmup_steps=c.warmup_steps,
        save_every=c.save_every,
        log_every=c.log_every,
        seed=c.seed,
        threads=c.threads,
        mixed_precision=c.mixed_precision,
    )
    summary = run_training(task, loop, c.out, resume=not c.no_resume)
    log(json.dumps(summary, indent=2))
    return summary
