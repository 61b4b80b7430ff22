"""``plvm train`` (the Aligner), ``plvm train-base`` (LLaVA-mini's base) and ``plvm export``.

Each training command turns its flags (and ``--config FILE``) into a recipe config and calls the recipe:
:func:`plvm.training.recipe.train_aligner`, :func:`plvm.models.llava_mini.recipe.train_base`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from plvm.cli.common import CONFIG_HELP, fail, recipe_config
from plvm.models.llava_mini.recipe import BaseTrainingConfig
from plvm.recipe import ConfigError
from plvm.training.recipe import AlignerTrainingConfig

app = typer.Typer()
_A = AlignerTrainingConfig.defaults()
_B = BaseTrainingConfig.defaults()


@app.command("train")
def train(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    preset: str = typer.Option(_A.preset, help="mini | llava-1.5-7b | onevision-7b"),
    data: str = typer.Option(_A.data, help="'avatarworld' or a training folder (train.json + images)"),
    out: Path = typer.Option(_A.out, help="output directory (checkpoints, log, plot, recipe.json)"),
    steps: int = typer.Option(_A.steps),
    batch_size: int = typer.Option(_A.batch_size),
    lr: float = typer.Option(_A.lr),
    warmup_steps: int = typer.Option(_A.warmup_steps),
    word_weight: float = typer.Option(_A.word_weight, help="w of Eq. 2 (Yes/No answer word weight)"),
    base_projector: Optional[Path] = typer.Option(
        _A.base_projector,
        help="--preset mini: train for this LLaVA-mini projector file (and the LoRA beside it) instead of the "
        "committed base",
    ),
    num_queries: Optional[int] = typer.Option(
        _A.num_queries, "--k", help="number of context tokens k (preset default)"
    ),
    positive_ratio: float = typer.Option(_A.positive_ratio, help="p, share of positive recognition samples"),
    recog_to_attr: float = typer.Option(_A.recog_to_attr, help="recognition : attribute-QA ratio"),
    hard_negative_share: float = typer.Option(_A.hard_negative_share),
    hard_negative_distance: int = typer.Option(_A.hard_negative_distance),
    encoder: Optional[str] = typer.Option(_A.encoder, help="reference encoder override (HF Dinov2 name/dir or 'mini')"),
    world_seed: int = typer.Option(_A.world_seed, help="AvatarWorld seed (identities and split)"),
    num_identities: int = typer.Option(_A.num_identities),
    seed: int = typer.Option(_A.seed),
    save_every: int = typer.Option(_A.save_every),
    log_every: int = typer.Option(_A.log_every),
    grad_accum: int = typer.Option(_A.grad_accum),
    mixed_precision: str = typer.Option(
        _A.mixed_precision, help="no | fp16 | bf16 (accelerate autocast; bf16 also on CPUs with AMX/AVX512-BF16)"
    ),
    threads: Optional[int] = typer.Option(_A.threads),
    no_resume: bool = typer.Option(_A.no_resume, help="start over even if OUT holds a checkpoint"),
    init_aligner: Optional[Path] = typer.Option(
        _A.init_aligner, help="start from these Aligner weights (a resumed checkpoint in OUT takes precedence)"
    ),
    calibrate: bool = typer.Option(
        _A.calibrate,
        help="fresh Aligner: standardise its inputs and start its "
        "outputs at the LM's embedding norms (on 32 training references)",
    ),
    head_anchor_references: int = typer.Option(
        _A.head_anchor_references,
        min=0,
        help="fresh run: start the context tokens as the base's own image tokens of the reference's head, pooled "
        "to a sqrt(k) x sqrt(k) grid, fitted on this many AvatarWorld references (plvm.training.head_anchor; 0 = off)",
    ),
    head_anchor_steps: int = typer.Option(_A.head_anchor_steps, min=1, help="steps of the head-anchor fit"),
    portrait_query_share: float = typer.Option(
        _A.portrait_query_share,
        min=0.0,
        max=1.0,
        help="AvatarWorld: share of recognition queries that are a one-person portrait instead of a scene",
    ),
    freeze_context: bool = typer.Option(
        _A.freeze_context,
        help="Eq. 2 trains f_word and f_weight only; the context tokens (the resampler) stay as initialised",
    ),
) -> None:
    """Train the Aligner (§3.2, Eq. 2) on a frozen base LVLM; resumable."""
    from plvm.training.recipe import train_aligner

    cfg = recipe_config(ctx, AlignerTrainingConfig, config)
    try:
        train_aligner(cfg, log=typer.echo)
    except ConfigError as exc:
        fail(str(exc))


@app.command("train-base")
def train_base(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    out: Path = typer.Option(_B.out),
    steps: int = typer.Option(_B.steps),
    batch_size: int = typer.Option(_B.batch_size),
    lr: float = typer.Option(_B.lr),
    warmup_steps: int = typer.Option(_B.warmup_steps),
    world_seed: int = typer.Option(_B.world_seed),
    num_identities: int = typer.Option(_B.num_identities),
    seed: int = typer.Option(_B.seed),
    save_every: int = typer.Option(_B.save_every),
    log_every: int = typer.Option(_B.log_every),
    threads: Optional[int] = typer.Option(_B.threads),
    no_resume: bool = typer.Option(_B.no_resume),
    lora_r: int = typer.Option(_B.lora_r, help="rank of LoRA adapters on the LM (0 = projector only)"),
    lora_alpha: int = typer.Option(_B.lora_alpha),
    mix: str = typer.Option(
        _B.mix, help="proportions of caption, visual QA, same-person and (optional) image-prompt recognition samples"
    ),
    turns: int = typer.Option(_B.turns, help="questions per visual-QA dialogue (several answers share one image)"),
    init_projector: Optional[Path] = typer.Option(_B.init_projector, help="start from this projector file"),
    mixed_precision: str = typer.Option(_B.mixed_precision, help="no | bf16 | fp16 (accelerate autocast)"),
    calibrate: bool = typer.Option(
        _B.calibrate,
        help="fresh projector: standardise its input features and scale "
        "its output to the word-embedding norm (on 16 training scenes)",
    ),
    anchor_images: int = typer.Option(
        _B.anchor_images,
        help="fresh projector: first anchor it to word embeddings "
        "on this many scenes (stage 0, plvm.models.llava_mini.anchor; 0 = off)",
    ),
    anchor_steps: int = typer.Option(_B.anchor_steps),
    anchor_regions: str = typer.Option(
        _B.anchor_regions,
        help="stage 0: 'person' (one word mix per person) or 'parts' (head → hair/face words, body → clothing words)",
    ),
    freeze_projector: bool = typer.Option(
        _B.freeze_projector, help="train only the LM LoRA (keep e.g. an anchored projector)"
    ),
    word_weight: float = typer.Option(
        _B.word_weight, help="Eq. 2's w on Yes/No answer words (e.g. the same-person answer)"
    ),
    same_portrait_share: float = typer.Option(
        _B.same_portrait_share,
        help="share of same-person questions that compare two portraits (the rest: a portrait and a scene)",
    ),
    described_share: float = typer.Option(
        _B.described_share,
        help="share of visual questions asking whether a "
        'described person is in the photo ("Is there a young man with short '
        'black hair in this image?")',
    ),
    image_prompt_pairs: bool = typer.Option(
        _B.image_prompt_pairs,
        help="image-prompt questions as twins: the "
        "same reference and question, one query with the named person "
        "(Yes) and one without (No); use an even batch size",
    ),
    attention_match: Optional[str] = typer.Option(
        _B.attention_match,
        help="'layer,head' of an LM attention head taught to compare the two people of an image-prompt question "
        "(its attention from the query's head tokens onto the reference's head; e.g. 8,0)",
    ),
    attention_report: Optional[str] = typer.Option(
        _B.attention_report,
        help="'layer,head' of an LM attention head (above --attention-match's) taught to report the comparison: "
        "from the answer position onto the named person's head if shown, onto no person's head otherwise",
    ),
    attention_match_weight: float = typer.Option(_B.attention_match_weight, help="weight of the attention losses"),
    vqa_kinds: Optional[str] = typer.Option(
        _B.vqa_kinds,
        help="weights of the open visual-question kinds, e.g. "
        "'hair_color=3,glasses=2,age=1' (open questions come from these "
        "kinds, or 'count' where one cannot be asked; default: all kinds, "
        "uniform)",
    ),
    described_properties: Optional[str] = typer.Option(
        _B.described_properties,
        help="what a described-person "
        "negative may change, e.g. 'hair_color,hair_style,glasses' "
        "(default: gender, age, hair_color, hair_style, "
        "facial_hair, glasses)",
    ),
    vision_feature_layer: Optional[str] = typer.Option(
        _B.vision_feature_layer,
        help="fresh projector: the DINOv2 "
        "hidden state(s) it reads, e.g. 8 or 8,-1 (concatenated); "
        "default -1 (last block); an --init-projector or a resumed "
        "run keeps its own",
    ),
    init_lora: Optional[Path] = typer.Option(
        _B.init_lora,
        help="start the LM LoRA from this lm_lora.safetensors "
        "(e.g. the committed one, under a fresh projector); default: the LoRA "
        "--init-projector names, if any",
    ),
    shape_identity_steps: int = typer.Option(
        _B.shape_identity_steps,
        min=0,
        help="stage 0 of LLaVA-mini v2 "
        "before stage 1: shape the projector so head tokens carry identity "
        "(plvm.models.llava_mini.identity_shaping; 0 = off)",
    ),
    shape_identity_weight: float = typer.Option(
        _B.shape_identity_weight, min=0.0, help="identity shaping's λ (contrastive weight)"
    ),
) -> None:
    """Stage 1 of LLaVA-mini: train the projector (and optionally LM LoRA) on AvatarWorld's generic data."""
    from plvm.models.llava_mini.recipe import train_base as run

    cfg = recipe_config(ctx, BaseTrainingConfig, config)
    try:
        run(cfg, log=typer.echo)
    except ConfigError as exc:
        fail(str(exc))


@app.command("export")
def export(
    checkpoint: Path = typer.Argument(..., help="a training checkpoint directory (checkpoint-NNNNNN)"),
    out: Path = typer.Argument(..., help="destination .safetensors"),
) -> None:
    """Write a checkpoint's trained weights as a standalone safetensors file (with its training state).

    A LLaVA-mini stage-1 checkpoint with LM LoRA also writes ``lm_lora.safetensors`` beside ``out``. A bad
    checkpoint (missing or corrupt state.json, unreadable, non-finite or mis-shaped weights) is refused with
    one ``error:`` line (exit status 2) and nothing is written."""
    from safetensors.torch import save_file

    from plvm.validation import WeightFileError, read_checkpoint, read_checkpoint_state

    try:
        state = read_checkpoint_state(checkpoint)
        metadata = {
            "step": str(state["step"]),
            "task": json.dumps(state["task"], sort_keys=True),
            "loop": json.dumps(state.get("loop", {}), sort_keys=True),
        }
        if state["task"].get("kind") == "projector":
            from plvm.models.llava_mini.assembly import export_stage1

            projector, lora = export_stage1(checkpoint, out, metadata)
            typer.echo(f"wrote {projector}" + (f" and {lora}" if lora else "") + f" (step {state['step']})")
            return
        if isinstance(state["task"].get("aligner"), dict):  # an Aligner run: its weights must fit its config
            from plvm.config import AlignerConfig
            from plvm.pipeline import read_aligner_weights

            try:
                config = AlignerConfig.from_dict(state["task"]["aligner"])
            except (TypeError, ValueError) as exc:
                raise WeightFileError(
                    f"{checkpoint / 'state.json'} records a malformed Aligner configuration "
                    f"({' '.join(str(exc).split())})"
                ) from None
            tensors = read_aligner_weights(checkpoint, config)
        else:
            _, tensors = read_checkpoint(checkpoint)
    except WeightFileError as exc:
        fail(" ".join(str(exc).split()))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=metadata)
    typer.echo(f"wrote {out} ({len(tensors)} tensors, step {state['step']})")
