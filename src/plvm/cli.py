"""The ``plvm`` command line (typer)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from .config import MINI_BASE_MODEL

app = typer.Typer(help="plvm — tuning-free personalization of vision-language models (PLVM).", no_args_is_help=True)


def _mount_optional(name: str, module: str, help_text: str) -> None:
    """Mount a sub-app whose module may be absent in a partial install."""
    try:
        sub = __import__(module, fromlist=["app"]).app
    except ImportError as exc:  # pragma: no cover - only in broken installs
        sub = typer.Typer(help=f"{help_text} (unavailable: {exc})")
    app.add_typer(sub, name=name, help=help_text)


_mount_optional("synth", "plvm.synth.cli", "Synthesize data (AvatarWorld).")
_mount_optional("bench", "plvm.bench.cli", "Benchmarks: what personalization costs (docs/BENCHMARKS.md).")
_mount_optional("diag", "plvm.diag.cli", "Diagnostics: check a base or a design in minutes (identity probe).")


def _register_product_commands() -> None:
    from .cli_product import register
    from .eval.cli import eval_command

    register(app)
    app.command("eval", help="Evaluate PLVM and its baselines (recognition, QA, multi-concept, captions).")(
        eval_command
    )


_register_product_commands()


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
    warmup_steps: int = typer.Option(0),
    word_weight: float = typer.Option(10.0, help="w of Eq. 2 (Yes/No answer word weight)"),
    answer_style: str = typer.Option("paper", help="positive recognition answers: 'paper' (\"Yes, <sks> is in this "
                                     "photo.\") or 'name-first' (\"<sks> is in this photo.\": the concept's output "
                                     "row makes the decision)"),
    bank_weight: float = typer.Option(0.0, help="λ of the identity-bank loss (not in the paper; name-first only): "
                                                "each query's answer state against every training identity's "
                                                "output row; 0 = off"),
    bank_renders: int = typer.Option(2, help="reference portraits per training identity in the bank"),
    portrait_query_share: float = typer.Option(0.0, help="AvatarWorld: share of recognition queries that are a "
                                                         "one-person portrait instead of a scene"),
    row_fit_queries: int = typer.Option(0, help="after training: fit the output row f_weight on the cached answer "
                                                "states of this many recognition queries (plvm.training.row_fit; "
                                                "name-first; written to OUT/row-fit; 0 = off)"),
    row_fit_epochs: int = typer.Option(300),
    row_fit_lr: float = typer.Option(1e-3),
    row_fit_weight_decay: float = typer.Option(0.0, help="AdamW weight decay of the row fit"),
    row_fit_own_weight: float = typer.Option(1.0, help="row fit: weight of the own-pair term (each query against "
                                                       "its own concept's row; 0 = the identity bank alone)"),
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
    mixed_precision: str = typer.Option("no", help="no | fp16 | bf16 (accelerate autocast; bf16 also on "
                                                   "CPUs with AMX/AVX512-BF16)"),
    threads: Optional[int] = typer.Option(None),
    no_resume: bool = typer.Option(False, help="start over even if OUT holds a checkpoint"),
    init_aligner: Optional[Path] = typer.Option(None, help="start from these Aligner weights (a resumed "
                                                          "checkpoint in OUT takes precedence)"),
    calibrate: bool = typer.Option(True, help="fresh Aligner: standardise its inputs and start its outputs "
                                              "at the LM's embedding norms (on 32 training references)"),
    anchor_references: int = typer.Option(0, help="fresh Aligner, AvatarWorld data: first anchor its context "
                                                  "tokens to the identity's attribute words on this many "
                                                  "references (plvm.training.word_anchor; 0 = off)"),
    anchor_steps: int = typer.Option(400),
) -> None:
    """Train the Aligner (§3.2, Eq. 2) on a frozen base LVLM; resumable."""
    from .aligner import Aligner
    from .config import get_preset
    from .injection import PersonalizedLVLM
    from .models.base import load_base, mini_base_revision
    from .pipeline import load_reference_encoder
    from .training.aligner_task import AlignerTaskConfig, AlignerTrainingTask
    from .training.data import AvatarWorldPersonalSource, FolderPersonalSource
    from .training.loop import LoopConfig, latest_checkpoint, run_training
    from .training.row_fit import RowFitConfig, fit_output_row, load_or_collect_answer_states, save_row_fit

    try:  # every option checked before anything loads
        task_config = AlignerTaskConfig(batch_size, word_weight, answer_style, bank_weight, bank_renders)
        if row_fit_queries and answer_style != "name-first":
            raise ValueError("--row-fit-queries fits the output row, which decides only name-first answers")
        row_fit = (RowFitConfig(row_fit_queries, row_fit_epochs, row_fit_lr, row_fit_weight_decay, seed=seed,
                                own_weight=row_fit_own_weight) if row_fit_queries else None)
    except ValueError as exc:
        fail(str(exc))
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
                                           hard_negative_share, hard_negative_distance, portrait_query_share)
    else:
        if portrait_query_share:
            fail("--portrait-query-share needs --data avatarworld")
        source = FolderPersonalSource(data, seed)
    model, processor = load_base("mini" if preset == "mini" else p.base_model)
    revision = mini_base_revision() if preset == "mini" else None
    lvlm = PersonalizedLVLM(model, processor, base_model=p.base_model, base_revision=revision)
    previous = None if no_resume else latest_checkpoint(out)  # a resume loads its weights: no init steps
    if previous is not None:
        from .pipeline import IncompatibleAlignerError, check_aligner_base

        try:  # a run resumed on another base would record the new revision on weights trained on the old one
            check_aligner_base(previous, lvlm)
        except IncompatibleAlignerError as exc:
            fail(f"cannot resume {out}: {exc}")
    enc, ref_proc = load_reference_encoder(cfg)
    aligner = Aligner(cfg, enc)
    if init_aligner is not None:
        from .pipeline import check_aligner_base, load_aligner_weights

        check_aligner_base(init_aligner, lvlm, allow_mismatch=True)  # a warm start from another base: warn
        load_aligner_weights(aligner, init_aligner)
    try:  # a folder source has no reference bank
        task = AlignerTrainingTask(lvlm, aligner, ref_proc, source, task_config)
    except ValueError as exc:
        fail(str(exc))
    fresh = init_aligner is None and previous is None
    if fresh and calibrate:
        refs = [ex.reference for ex in source.examples(10**6, 32)]  # a batch index the run never reaches
        factors = aligner.calibrate(
            task.reference_pixels(refs),
            word_norm=float(model.get_input_embeddings().weight.float().norm(dim=-1).mean()),
            weight_norm=float(model.get_output_embeddings().weight.float().norm(dim=-1).mean()))
        typer.echo("Aligner outputs calibrated: " + ", ".join(f"{k} x{v:.3f}" for k, v in factors.items()))
    if fresh and anchor_references > 0:
        if data != "avatarworld":
            raise typer.BadParameter("--anchor-references needs --data avatarworld (identity attributes)")
        import numpy as np

        from .training.word_anchor import train_aligner_anchor

        rng = np.random.default_rng([seed, 777])
        pool = world.split("train")
        people = [pool[int(i)] for i in rng.integers(len(pool), size=anchor_references)]
        samples = [(world.render_reference(p, rng_or_seed=rng), dict(p.attributes)) for p in people]
        stats = train_aligner_anchor(aligner, processor.tokenizer, model.get_input_embeddings().weight,
                                     task.reference_pixels, samples, steps=anchor_steps, seed=seed, log=typer.echo)
        out.mkdir(parents=True, exist_ok=True)
        (out / "anchor.json").write_text(json.dumps(stats, indent=2))
    if answer_style == "name-first" and previous is None and not bool(aligner.row_mean.any()):
        # the concept's output row decides a name-first answer: condition it on the LM's answer states
        probe = [ex for ex in source.examples(10**6 + 1, 96) if ex.kind.startswith("recog")][:32]
        if not probe:
            fail("--answer-style name-first needs recognition samples (kind recog_pos / recog_neg) in the data")
        hidden, no_logit = task.answer_states(probe)
        stats = aligner.calibrate_output_row(task.reference_pixels([ex.reference for ex in probe]), hidden,
                                             float(no_logit.mean()))
        typer.echo("Aligner output row conditioned: " + ", ".join(f"{k} {v:.3f}" for k, v in stats.items()))
    loop = LoopConfig(steps=steps, lr=lr, warmup_steps=warmup_steps, save_every=save_every, log_every=log_every,
                      seed=seed, grad_accum=grad_accum, mixed_precision=mixed_precision, threads=threads)
    summary = run_training(task, loop, out, resume=not no_resume)
    typer.echo(json.dumps(summary, indent=2))
    if row_fit is not None:
        try:
            states = load_or_collect_answer_states(task, row_fit, out / f"row-fit-states-{row_fit.queries}.safetensors")
            report = fit_output_row(task, states, row_fit, log=typer.echo)
        except ValueError as exc:
            fail(f"row fit: {exc}")
        (out / "row-fit.json").write_text(json.dumps(report, indent=2))
        path = save_row_fit(out / "row-fit", task, summary["step"], loop.to_dict(), report)
        typer.echo(f"row fit: kept epoch {report['kept_epoch']} (held-out AUC {report['kept_heldout_auc']:.3f}); "
                   f"wrote {path}")


def _open_kinds_option(text: str | None) -> dict[str, float] | None:
    """``--vqa-kinds 'hair_color=3,glasses=1'`` → validated weights (``None`` stays ``None``)."""
    if text is None:
        return None
    from .synth.qa import open_kind_weights

    try:
        return open_kind_weights(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--vqa-kinds") from None


def _feature_layer_option(text: str | None, init_projector: Path | None, resumed: Path | None) -> Any:
    """``--vision-feature-layer`` → the layer(s) to build LLaVA-mini with; a resumed run or an ``--init-projector``
    keeps the layer it was trained on (a different explicit value is an error, except a list that contains an
    init projector's single layer: it is widened to read them all); ``None``: the default."""
    from .models.llava_mini.assembly import feature_layer_str, parse_feature_layer, projector_metadata, widens

    try:
        wanted = parse_feature_layer(text) if text is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--vision-feature-layer") from None
    recorded, source = None, None
    if resumed is not None:
        task = json.loads((resumed / "state.json").read_text())["task"]
        recorded, source = task.get("vision_feature_layer", "-1"), f"the run resumed from {resumed}"
    elif init_projector is not None:
        recorded, source = projector_metadata(init_projector).get("vision_feature_layer", "-1"), str(init_projector)
    if recorded is None:
        return wanted
    if resumed is None and widens(parse_feature_layer(recorded), wanted):  # an --init-projector read as one of
        return wanted                                                       # several layers (identity_shaping)
    if wanted is not None and feature_layer_str(wanted) != recorded:
        raise typer.BadParameter(f"{source} reads vision feature layer {recorded}, not {text}",
                                 param_hint="--vision-feature-layer")
    return parse_feature_layer(recorded)


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
    lora_r: int = typer.Option(0, help="rank of LoRA adapters on the LM (0 = projector only)"),
    lora_alpha: int = typer.Option(32),
    mix: str = typer.Option("0.4,0.4,0.2", help="proportions of caption, visual QA, same-person and (optional) "
                                                "image-prompt recognition samples"),
    turns: int = typer.Option(1, help="questions per visual-QA dialogue (several answers share one image)"),
    init_projector: Optional[Path] = typer.Option(None, help="start from this projector file"),
    mixed_precision: str = typer.Option("no", help="no | bf16 | fp16 (accelerate autocast)"),
    calibrate: bool = typer.Option(True, help="fresh projector: standardise its input features and scale its "
                                              "output to the word-embedding norm (on 16 training scenes)"),
    anchor_images: int = typer.Option(0, help="fresh projector: first anchor it to word embeddings on this many "
                                              "scenes (stage 0, plvm.models.llava_mini.anchor; 0 = off)"),
    anchor_steps: int = typer.Option(400),
    anchor_regions: str = typer.Option("person", help="stage 0: 'person' (one word mix per person) or 'parts' "
                                                      "(head → hair/face words, body → clothing words)"),
    freeze_projector: bool = typer.Option(False, help="train only the LM LoRA (keep e.g. an anchored projector)"),
    word_weight: float = typer.Option(1.0, help="Eq. 2's w on Yes/No answer words (e.g. the same-person answer)"),
    same_portrait_share: float = typer.Option(0.5, help="share of same-person questions that compare two "
                                                        "portraits (the rest: a portrait and a scene)"),
    described_share: float = typer.Option(0.0, help="share of visual questions asking whether a described person "
                                                    "is in the photo (\"Is there a young man with short black "
                                                    "hair in this image?\")"),
    vqa_kinds: Optional[str] = typer.Option(None, help="weights of the open visual-question kinds, e.g. "
                                                       "'hair_color=3,glasses=2,age=1' (open questions come from "
                                                       "these kinds, or 'count' where one cannot be asked; "
                                                       "default: all kinds, uniform)"),
    described_properties: Optional[str] = typer.Option(None, help="what a described-person negative may change, "
                                                                  "e.g. 'hair_color,hair_style,glasses' (default: "
                                                                  "gender, age, hair_color, hair_style, facial_hair, "
                                                                  "glasses)"),
    vision_feature_layer: Optional[str] = typer.Option(None, help="fresh projector: the DINOv2 hidden state(s) it "
                                                                  "reads, e.g. 8 or 8,-1 (concatenated); default -1 "
                                                                  "(last block); an --init-projector or a resumed run "
                                                                  "keeps its own"),
    init_lora: Optional[Path] = typer.Option(None, help="start the LM LoRA from this lm_lora.safetensors (e.g. "
                                                        "the committed one, under a fresh projector); default: the "
                                                        "LoRA --init-projector names, if any"),
    shape_identity_steps: int = typer.Option(0, min=0, help="stage 0 of LLaVA-mini v2 before stage 1: shape the "
                                                            "projector so head tokens carry identity "
                                                            "(plvm.models.llava_mini.identity_shaping; 0 = off)"),
    shape_identity_weight: float = typer.Option(0.3, min=0.0, help="identity shaping's λ (contrastive weight)"),
) -> None:
    """Stage 1 of LLaVA-mini: train the projector (and optionally LM LoRA) on AvatarWorld's generic data."""
    from .injection import PersonalizedLVLM
    from .models.llava_mini.anchor import REGIONS
    from .models.llava_mini.assembly import (
        build_llava_mini,
        parse_feature_layer,
        projector_lora,
        projector_metadata,
        widens,
    )
    from .models.llava_mini.lora import MiniLoraConfig, load_lora_state_dict, read_lora
    from .models.llava_mini.stage1_data import AvatarWorldGenericSource
    from .models.llava_mini.stage1_task import ProjectorTrainingTask
    from .synth.avatarworld import AvatarWorld
    from .training.loop import LoopConfig, latest_checkpoint, run_training

    weights = tuple(float(x) for x in mix.split(","))
    if len(weights) not in (3, 4) or min(weights) < 0 or sum(weights) <= 0:
        raise typer.BadParameter("--mix needs three or four non-negative numbers, e.g. 0.2,0.5,0.3 or "
                                 "0.1,0.4,0.1,0.4")
    if anchor_regions not in REGIONS:
        raise typer.BadParameter(f"--anchor-regions must be one of {', '.join(REGIONS)}")
    open_kinds = _open_kinds_option(vqa_kinds)
    properties = None
    if described_properties:
        from .synth.qa import check_described_properties

        try:
            properties = check_described_properties([x.strip() for x in described_properties.split(",")])
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--described-properties") from None
        if described_share == 0:
            typer.echo("warning: --described-properties has no effect with --described-share 0", err=True)
    if init_lora is not None and not init_lora.is_file():
        raise typer.BadParameter(f"no such file: {init_lora}", param_hint="--init-lora")
    resumed = None if no_resume else latest_checkpoint(out)
    layer = _feature_layer_option(vision_feature_layer, init_projector, resumed)
    widen = init_projector is not None and widens(
        parse_feature_layer(projector_metadata(init_projector).get("vision_feature_layer", "-1")), layer)
    model, processor = build_llava_mini(projector=None if widen else init_projector, lora=False,
                                        vision_feature_layer=layer)
    if widen:
        from .models.llava_mini.identity_shaping import load_widened_projector

        load_widened_projector(model, init_projector)
    lvlm = PersonalizedLVLM(model, processor, base_model=MINI_BASE_MODEL)
    world = AvatarWorld(seed=world_seed, num_identities=num_identities)
    fresh = init_projector is None and latest_checkpoint(out) is None  # init steps; a resume loads its weights
    if fresh and calibrate:
        import numpy as np

        from .models.llava_mini.assembly import calibrate_projector

        rng = np.random.default_rng([seed, 10**6])  # 16 training scenes, disjoint from the sample stream
        images = [world.sample_scene(rng, "train").image for _ in range(16)]
        stats = calibrate_projector(model, processor.image_processor(images, return_tensors="pt")["pixel_values"])
        typer.echo(f"projector calibrated on 16 scenes: {stats}")
    if fresh and anchor_images > 0:
        from .models.llava_mini.anchor import train_anchor

        stats = train_anchor(model, processor.tokenizer, processor.image_processor,
                             lambda r: world.sample_scene(r, "train"), n_images=anchor_images, steps=anchor_steps,
                             seed=seed, log=typer.echo, regions=anchor_regions)
        out.mkdir(parents=True, exist_ok=True)
        (out / "anchor.json").write_text(json.dumps(stats, indent=2))
    if shape_identity_steps > 0 and resumed is None:  # a resumed run's checkpoint holds the shaped projector
        from dataclasses import asdict

        from .models.llava_mini.identity_shaping import IdentityShapingConfig, collect_tower_features, shape_projector

        shaping = IdentityShapingConfig(steps=shape_identity_steps, identity_weight=shape_identity_weight, seed=seed)
        cache = collect_tower_features(model, processor.image_processor, world, shaping, log=typer.echo)
        stats = shape_projector(model, cache, shaping, log=typer.echo)
        del cache
        out.mkdir(parents=True, exist_ok=True)
        (out / "identity_shaping.json").write_text(json.dumps({"config": asdict(shaping), "final": stats}, indent=2))
    lora = MiniLoraConfig(r=lora_r, lora_alpha=lora_alpha) if lora_r > 0 else None
    source = AvatarWorldGenericSource(world, seed, mix=weights, turns=turns, same_portrait_share=same_portrait_share,
                                      described_share=described_share, open_kinds=open_kinds,
                                      described_properties=properties)
    task = ProjectorTrainingTask(lvlm, source, batch_size, lora, train_projector=not freeze_projector,
                                 word_weight=word_weight)
    if init_lora is None and init_projector is not None:
        init_lora = projector_lora(init_projector)
    if init_lora is not None:  # continue that LoRA (not stack a new one on it)
        tensors, trained_with = read_lora(init_lora)
        if trained_with != lora:
            raise typer.BadParameter(f"{init_lora} was trained with LoRA r={trained_with.r}, "
                                     f"alpha={trained_with.lora_alpha}: pass the same --lora-r/--lora-alpha")
        load_lora_state_dict(task.tuner, tensors)
    loop = LoopConfig(steps=steps, lr=lr, warmup_steps=warmup_steps, save_every=save_every,
                      log_every=log_every, seed=seed, threads=threads, mixed_precision=mixed_precision)
    summary = run_training(task, loop, out, resume=not no_resume)
    typer.echo(json.dumps(summary, indent=2))


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

    from .validation import WeightFileError, read_checkpoint, read_checkpoint_state

    try:
        state = read_checkpoint_state(checkpoint)
        metadata = {"step": str(state["step"]), "task": json.dumps(state["task"], sort_keys=True),
                    "loop": json.dumps(state.get("loop", {}), sort_keys=True)}
        if state["task"].get("kind") == "projector":
            from .models.llava_mini.assembly import export_stage1

            projector, lora = export_stage1(checkpoint, out, metadata)
            typer.echo(f"wrote {projector}" + (f" and {lora}" if lora else "") + f" (step {state['step']})")
            return
        if isinstance(state["task"].get("aligner"), dict):  # an Aligner run: its weights must fit its config
            from .config import AlignerConfig
            from .pipeline import read_aligner_weights

            try:
                config = AlignerConfig.from_dict(state["task"]["aligner"])
            except (TypeError, ValueError) as exc:
                raise WeightFileError(f"{checkpoint / 'state.json'} records a malformed Aligner configuration "
                                      f"({' '.join(str(exc).split())})") from None
            tensors = read_aligner_weights(checkpoint, config)
        else:
            _, tensors = read_checkpoint(checkpoint)
    except WeightFileError as exc:
        fail(" ".join(str(exc).split()))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=metadata)
    typer.echo(f"wrote {out} ({len(tensors)} tensors, step {state['step']})")


@app.command("eval-base")
def eval_base(
    projector: Optional[Path] = typer.Option(None, help="projector.safetensors or a stage-1 checkpoint dir"),
    n_open: int = typer.Option(200, help="open questions, scored by ranking every well-formed answer"),
    n_vqa: int = typer.Option(200, help="multiple-choice questions, scored by the option letter"),
    n_same: int = typer.Option(200),
    n_described: int = typer.Option(0, help="'Is there <a described person> in this image?' questions"),
    vqa_kinds: Optional[str] = typer.Option(None, help="weights of the open question kinds drawn, e.g. "
                                                       "'hair_color=1' (default: all kinds, uniform)"),
    seed: int = typer.Option(1234),
    world_seed: int = typer.Option(0),
    out: Optional[Path] = typer.Option(None, help="write the result JSON here"),
) -> None:
    """Held-out generic VQA and two-image same/different accuracy of LLaVA-mini (no personalization)."""
    open_kinds = _open_kinds_option(vqa_kinds)
    import tempfile

    from .injection import PersonalizedLVLM
    from .models.base import load_base
    from .models.llava_mini.assembly import export_stage1
    from .models.llava_mini.base_eval import evaluate_base
    from .synth.avatarworld import AvatarWorld
    from .validation import WeightFileError

    source = projector
    with tempfile.TemporaryDirectory() as tmp:
        try:  # a bad file or checkpoint fails here, before the model loads (plvm.validation.read_weights)
            if projector is not None and projector.is_dir():  # a training checkpoint: split it like `plvm export`
                projector, _ = export_stage1(projector, Path(tmp) / "projector.safetensors")
            model, processor = load_base("mini", projector=projector)  # None: the committed projector (+ LoRA)
        except WeightFileError as exc:
            fail(" ".join(str(exc).split()))
    lvlm = PersonalizedLVLM(model, processor, base_model=MINI_BASE_MODEL)
    result = evaluate_base(lvlm, AvatarWorld(seed=world_seed), n_vqa=n_vqa, n_same=n_same, seed=seed,
                           n_open=n_open, n_described=n_described, open_kinds=open_kinds)
    result.config["projector"] = str(source) if source else "committed"
    typer.echo(result.to_json())
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(result.to_json())


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="where the demo's images are written"),
    world_seed: int = typer.Option(0),
    identity: int = typer.Option(0, help="index of the held-out (test) identity to personalize"),
    seed: int = typer.Option(1, help="scene seed"),
    allow_untrained: bool = typer.Option(False, help="run even without trained weights (answers meaningless)"),
) -> None:
    """One reference photo of a held-out AvatarWorld person → recognition and a caption on LLaVA-mini."""
    import time

    import numpy as np

    from .conversation import Conversation
    from .pipeline import PLVM, IncompatibleAlignerError
    from .synth.avatarworld import AvatarWorld

    t0 = time.time()
    try:
        plvm = PLVM.from_preset("mini", allow_untrained=allow_untrained)
    except (FileNotFoundError, ImportError, IncompatibleAlignerError) as exc:
        fail(str(exc))
    typer.echo(f"loaded LLaVA-mini + Aligner in {time.time() - t0:.1f} s")
    world = AvatarWorld(seed=world_seed)
    person = world.split("test")[identity]
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    reference = world.render_reference(person)
    with_bo = world.sample_scene(rng, split="test", include=[person], n_people=2)
    without_bo = world.sample_scene(rng, split="test", exclude=[person], n_people=2)
    reference.save(out / "reference.png")
    with_bo.image.save(out / "scene_with_bo.png")
    without_bo.image.save(out / "scene_without_bo.png")
    typer.echo(f"<bo> = held-out identity {person.id}: {person.describe()}  (reference: {out / 'reference.png'})")
    from .synth import qa

    typer.echo("LLaVA-mini itself (no personalization) on scene_with_bo.png:")
    for kind in ("count", "clothing_color"):
        item = qa.generic_vqa(with_bo.graph, rng, kind=kind)
        t1 = time.time()
        conv = Conversation()
        conv.user(item.prompt, image=with_bo.image)
        typer.echo(f"  {item.prompt}  truth: {item.answer}\n  answer: ", nl=False)
        plvm.lvlm.generate(conv, max_new_tokens=12, on_text=lambda t: typer.echo(t, nl=False))
        typer.echo(f"  ({time.time() - t1:.1f} s)")
    t1 = time.time()
    bo = plvm.make_concept("bo", reference)
    typer.echo(f"concept <bo> made in {1000 * (time.time() - t1):.0f} ms (one Aligner forward, no training)\n")
    for label, scene, truth in (("scene_with_bo.png", with_bo, "Yes"), ("scene_without_bo.png", without_bo, "No")):
        t1 = time.time()
        score = plvm.is_present(scene.image, bo)
        typer.echo(f"[{label}] Is <bo> in this photo?  truth: {truth}")
        typer.echo(f"  Yes/No log-odds {score:+.2f} → {'Yes' if score > 0 else 'No'}  ({time.time() - t1:.1f} s)")
        t1 = time.time()
        typer.echo("  answer: ", nl=False)
        conv = Conversation([bo])
        conv.user("Is <bo> in this photo?", image=scene.image)
        plvm.lvlm.generate(conv, max_new_tokens=24, on_text=lambda t: typer.echo(t, nl=False))
        typer.echo(f"  ({time.time() - t1:.1f} s)")
    t1 = time.time()
    typer.echo("[scene_with_bo.png] Can you see <bo> in the image? ... Your caption:\n  ", nl=False)
    conv = Conversation([bo])
    conv.user(
        "Can you see <bo> in the image? Don't answer the question, but remember it, and only respond with a "
        "detailed caption for the image. Your caption:",
        image=with_bo.image,
    )
    plvm.lvlm.generate(conv, max_new_tokens=60, on_text=lambda t: typer.echo(t, nl=False))
    typer.echo(f"  ({time.time() - t1:.1f} s)")
    typer.echo(f"\ntotal {time.time() - t0:.1f} s")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


if __name__ == "__main__":
    main()
