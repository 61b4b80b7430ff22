"""``plvm eval`` (the evaluation harness, :mod:`plvm.eval`) and ``plvm eval-base`` (LLaVA-mini without
personalization, :mod:`plvm.models.llava_mini.base_eval`).

Examples::

    plvm eval --model mini --data data/avatarworld-eval --out docs/results/mini
    plvm eval --model tiny --toy --data /tmp/toy --out /tmp/toy-eval --yollava-steps 3   # smoke test
    plvm eval-base --n-open 200 --n-vqa 0 --n-same 0
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from plvm.cli.common import fail
from plvm.config import MINI_BASE_MODEL

app = typer.Typer()


def load_plvm(
    model: str,
    aligner_weights: Optional[Path] = None,
    allow_untrained: bool = False,
    allow_base_mismatch: bool = False,
    base_projector: Optional[Path] = None,
) -> Any:
    """``"tiny"`` → :func:`plvm.models.tiny_plvm.tiny_plvm` on the llava-1.5 template (with ``aligner_weights``
    loaded into its Aligner, if given); a preset name (``mini``, ``llava-1.5-7b``, …) → ``PLVM.from_preset``. Bad
    weights raise a one-line :class:`plvm.validation.WeightFileError`."""
    if model == "tiny":
        if base_projector is not None:
            raise typer.BadParameter("--base-projector is for --model mini")
        from plvm.models.tiny_plvm import tiny_plvm

        plvm = tiny_plvm(template="llava15")  # the tiny layout plvm eval has always used (USER:/ASSISTANT:)
        if aligner_weights is not None:
            from plvm.pipeline import load_aligner_weights

            load_aligner_weights(plvm.aligner, aligner_weights)
        return plvm
    from plvm.pipeline import PLVM

    return PLVM.from_preset(
        model,
        aligner_weights=aligner_weights,
        allow_untrained=allow_untrained,
        allow_base_mismatch=allow_base_mismatch,
        base_projector=base_projector,
    )


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@app.command("eval", help="Evaluate PLVM and its baselines (recognition, QA, multi-concept, captions).")
def eval_command(
    model: str = typer.Option("mini", help="tiny (random, smoke tests) | mini | llava-1.5-7b | onevision-7b"),
    data: Optional[Path] = typer.Option(
        None, help="dataset folder (PLVM validation or Yo'LLaVA layout, optional multi/)"
    ),
    data_format: str = typer.Option("auto", "--format", help="auto | plvm | yollava"),
    tasks: str = typer.Option("recog,textqa,vqa,multi,caption", help="comma-separated tasks"),
    baselines: str = typer.Option("none,text,image,yollava,plvm", help="comma-separated methods"),
    out: Path = typer.Option(
        Path("runs/eval"),
        help="output folder (results.json/.md/.png, predictions.jsonl), "
        "or NAME.md (NAME.json/.png/.predictions.jsonl beside it)",
    ),
    limit: Optional[int] = typer.Option(None, help="at most N items per task (seeded subset)"),
    concepts: Optional[int] = typer.Option(
        None, "--concepts", help="evaluate a seeded subset of N concepts (for costly methods such as yollava)"
    ),
    caption_limit: Optional[int] = typer.Option(None, help="at most N caption items (default: --limit)"),
    multi_limit: Optional[int] = typer.Option(
        None, help="at most N multi-concept questions (default: --limit; more items, smaller AUC standard errors)"
    ),
    scoring: str = typer.Option(
        "logits",
        help="logits (one forward) | likelihood (multiple choice: each option's text scored as the answer) | "
        "generate (parse the answer text)",
    ),
    negatives: int = typer.Option(3, help="recognition negatives per query image"),
    batch_size: int = typer.Option(8),
    seed: int = typer.Option(0),
    aligner_weights: Optional[Path] = typer.Option(None, help="trained Aligner (default: the preset's)"),
    allow_untrained: bool = typer.Option(False, help="run PLVM with a random Aligner (sanity checks only)"),
    allow_base_mismatch: bool = typer.Option(
        False,
        help="use Aligner weights trained on another revision of the "
        "base (e.g. an older LLaVA-mini projector), with a warning",
    ),
    base_projector: Optional[Path] = typer.Option(
        None,
        help="--model mini: evaluate on this trained LLaVA-mini "
        "projector (+ the LoRA it names) instead of the "
        "committed base",
    ),
    yollava_steps: int = typer.Option(100, help="Yo'LLaVA tuning steps per concept"),
    yollava_lr: float = typer.Option(5e-3),
    yollava_batch: int = typer.Option(4),
    yollava_cache: Optional[Path] = typer.Option(
        None,
        help="save each Yo'LLaVA-tuned concept here and reuse it when a later run's tuning would be the same "
        "(config, base, training photos): a table over many concepts can be built over several runs",
    ),
    k: Optional[int] = typer.Option(None, "--k", help="Yo'LLaVA context tokens (default: PLVM's k)"),
    text_tokens: Optional[int] = typer.Option(None, help="text-prompt description length (default: PLVM's k)"),
    caption_tokens: int = typer.Option(48, help="caption length in tokens"),
    distractors: int = typer.Option(1, help="captioning: concepts introduced that are not in the photo"),
    phrase: str = typer.Option("the person", help="neutral phrase of the no-personalization rewrite"),
    subject: str = typer.Option("person", help="what the concepts are (text-prompt description instruction)"),
    no_controls: bool = typer.Option(False, help="skip the wrong-concept / no-personalization QA controls"),
    recognition_question: str = typer.Option("Is <sks> in this photo?", help="recognition question (<sks>)"),
    mc_instruction: Optional[str] = typer.Option(
        None,
        help="instruction after MC options (default: LLaVA's "
        "\"Answer with the option's letter from the given "
        'choices directly.")',
    ),
    scenario_size: int = typer.Option(
        4, help="multi-concept: concepts asked about per image (its own, then seeded absent ones), MC-LLaVA-sized"
    ),
    max_set_size: int = typer.Option(4, help="multi-concept: largest concept set asked at once"),
    reference_index: int = typer.Option(0, help="Yo'LLaVA layout: which train image is the reference"),
    negative_examples: bool = typer.Option(
        False, help="Yo'LLaVA layout: read train/<id>/negative_example/ (extra negatives for Yo'LLaVA tuning)"
    ),
    face_backend: str = typer.Option(
        "dlib",
        help="identify / plvm-idp methods: dlib | insightface (needs "
        "PLVM_ALLOW_NONCOMMERCIAL=1) | none (image features only)",
    ),
    identify_threshold: Optional[float] = typer.Option(None, help="identify: image-feature cosine threshold"),
    toy: bool = typer.Option(False, help="first write a tiny synthetic dataset into --data (smoke tests)"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads"),
    no_progress: bool = typer.Option(False, help="hide progress bars"),
) -> None:
    """Evaluate PLVM and baselines on one dataset at the same token budget; write JSON, Markdown, PNG, JSONL."""
    from plvm.eval.config import EvalConfig
    from plvm.eval.harness import run_evaluation
    from plvm.eval.methods import MethodOptions, YoLLaVAConfig, build_methods
    from plvm.eval.readers import DatasetFormatError, detect_format, read_dataset
    from plvm.eval.toydata import write_toy_dataset

    if data is None:
        raise typer.BadParameter("--data is required (use --toy --data DIR for a synthetic smoke-test set)")
    if threads:
        import torch

        torch.set_num_threads(threads)
    if toy:
        write_toy_dataset(data)
    try:
        fmt = detect_format(data) if data_format == "auto" else data_format
        extra = {"reference_index": reference_index, "negative_examples": negative_examples} if fmt == "yollava" else {}
        dataset = read_dataset(data, format=fmt, **extra)
        if concepts is not None:
            dataset = dataset.subset(concepts, seed)
    except (DatasetFormatError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    try:
        config = EvalConfig(
            tasks=tuple(_split(tasks)),
            seed=seed,
            scoring=scoring,
            negatives_per_image=negatives,
            limit=limit,
            caption_limit=caption_limit,
            multi_limit=multi_limit,
            batch_size=batch_size,
            caption_max_new_tokens=caption_tokens,
            caption_distractors=distractors,
            phrase=phrase,
            controls=not no_controls,
            recognition_question=recognition_question,
            scenario_size=scenario_size,
            max_set_size=max_set_size,
            **({"mc_instruction": mc_instruction} if mc_instruction is not None else {}),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc))
    keys = _split(baselines)
    from plvm.pipeline import IncompatibleAlignerError
    from plvm.validation import WeightFileError

    uses_aligner = bool({"plvm", "plvm-idp"} & set(keys))
    try:  # without an Aligner-based method the Aligner is unused: neither trained weights nor their base matter
        plvm = load_plvm(
            model,
            aligner_weights,
            allow_untrained or not uses_aligner,
            allow_base_mismatch or not uses_aligner,
            base_projector,
        )
    except (IncompatibleAlignerError, WeightFileError) as exc:  # weights: before any model loads
        fail(str(exc))
    face = None
    if face_backend != "none" and {"identify", "plvm-idp"} & set(keys):
        from plvm.cli.product import ModelUnavailableError, load_face_backend

        try:
            face = load_face_backend(face_backend)
        except ModelUnavailableError as exc:  # missing package / licence opt-in
            raise typer.BadParameter(f"{exc} (or --face-backend none)")
    options = MethodOptions(
        face=face,
        identify_threshold=identify_threshold,
        phrase=phrase,
        text_tokens=text_tokens,
        describe_prompt=f"Describe the {subject} in this image in one short sentence.",
        yollava=YoLLaVAConfig(steps=yollava_steps, lr=yollava_lr, batch_size=yollava_batch, seed=seed),
        yollava_k=k,
        yollava_cache=yollava_cache,
    )
    try:
        methods = build_methods(keys, plvm.lvlm, plvm, options)
    except ValueError as exc:
        raise typer.BadParameter(str(exc))
    meta: dict[str, Any] = {
        "model": model,
        "data": str(data),
        "title": f"plvm eval — {model} on {dataset.name}",
        "aligner_weights": str(aligner_weights) if aligner_weights else None,
        "command": "plvm eval " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
    }
    if model == "tiny":
        meta["warning"] = "random tiny model and random Aligner (smoke test): the numbers are noise."
    elif allow_untrained and "plvm" in keys:
        meta["warning"] = "PLVM ran with an UNTRAINED (random) Aligner: its numbers are meaningless."
    result = run_evaluation(methods, dataset, config.tasks, out, config, progress=not no_progress, meta=meta)
    typer.echo(Path(result.files["markdown"]).read_text())
    typer.echo(json.dumps(result.files, indent=2))


def _open_kinds(text: str | None) -> dict[str, float] | None:
    """``--vqa-kinds 'hair_color=3,glasses=1'`` → validated weights (``None`` stays ``None``)."""
    if text is None:
        return None
    from plvm.synth.qa import open_kind_weights

    try:
        return open_kind_weights(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--vqa-kinds") from None


@app.command("eval-base")
def eval_base(
    projector: Optional[Path] = typer.Option(None, help="projector.safetensors or a stage-1 checkpoint dir"),
    n_open: int = typer.Option(200, help="open questions, scored by ranking every well-formed answer"),
    n_vqa: int = typer.Option(200, help="multiple-choice questions, scored by the option letter"),
    n_same: int = typer.Option(200),
    n_described: int = typer.Option(0, help="'Is there <a described person> in this image?' questions"),
    vqa_kinds: Optional[str] = typer.Option(
        None, help="weights of the open question kinds drawn, e.g. 'hair_color=1' (default: all kinds, uniform)"
    ),
    seed: int = typer.Option(1234),
    world_seed: int = typer.Option(0),
    out: Optional[Path] = typer.Option(None, help="write the result JSON here"),
) -> None:
    """Held-out generic VQA and two-image same/different accuracy of LLaVA-mini (no personalization)."""
    open_kinds = _open_kinds(vqa_kinds)
    import tempfile

    from plvm.injection import PersonalizedLVLM
    from plvm.models.base import load_base
    from plvm.models.llava_mini.assembly import export_stage1
    from plvm.models.llava_mini.base_eval import evaluate_base
    from plvm.synth.avatarworld import AvatarWorld
    from plvm.validation import WeightFileError

    source = projector
    with tempfile.TemporaryDirectory() as tmp:
        try:  # a bad file or checkpoint fails here, before the model loads (plvm.validation.read_weights)
            if projector is not None and projector.is_dir():  # a training checkpoint: split it like `plvm export`
                projector, _ = export_stage1(projector, Path(tmp) / "projector.safetensors")
            model, processor = load_base("mini", projector=projector)  # None: the committed projector (+ LoRA)
        except WeightFileError as exc:
            fail(" ".join(str(exc).split()))
    lvlm = PersonalizedLVLM(model, processor, base_model=MINI_BASE_MODEL)
    result = evaluate_base(
        lvlm,
        AvatarWorld(seed=world_seed),
        n_vqa=n_vqa,
        n_same=n_same,
        seed=seed,
        n_open=n_open,
        n_described=n_described,
        open_kinds=open_kinds,
    )
    result.config["projector"] = str(source) if source else "committed"
    typer.echo(result.to_json())
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(result.to_json())
