"""Base LVLM cost per recognition answer: two or more LLaVA-mini bases (projector files), side by side.

A *base* is LLaVA-mini built from one projector file (``load_base("mini", projector=PATH)``: the projector,
the DINOv2 block(s) it reads — ``vision_feature_layer`` from the file's metadata, e.g. ``-1`` or ``[8, -1]``
— and the LM LoRA it names). For each base, in one process:

* **start-up** — wall time of building it (``load_base`` + :class:`~plvm.injection.PersonalizedLVLM`),
  measured once per base, in the order given (the first build also pays cold file caches);
* **one recognition answer** — :meth:`PersonalizedLVLM.score_yes_no` on one conversation (batch 1: one
  forward, the Yes/No log-odds of the first answer token; what ``plvm eval --scoring logits`` runs),
  timed per question, including the processor's image preprocessing and tokenization. Two prompt shapes
  for the same seeded AvatarWorld questions (world seed 0, test split):

  * ``image_prompt`` — the eval harness's image-prompt layout (:class:`plvm.eval.methods.ImagePrompt`):
    ``"Here is <id0003>: <image>.\\n<image>\\nIs <id0003> in this photo?"`` with the reference portrait
    and the query scene (2 images);
  * ``plain`` — ``"<image>\\nIs there a person with glasses in this image?"`` on the query scene alone
    (1 image).

Half of the questions show the person asked about (``sample_scene(include=[identity])``), half do not
(``exclude=[identity]``), so scenes have the usual 1–4 people. After ``warmup`` untimed passes per base,
each repeat runs every base over all questions (both shapes per question), bases interleaved (A, B, A, B …)
so that load drift hits all of them. Reported per base and shape: min / median / max ms per question over
all ``queries × repeats`` samples, prompt tokens, and the ratio of the median to the first base's median
(with the range of the per-repeat ratios). The log-odds are kept in the JSON; their accuracy on these few
questions is a sanity check only (``plvm eval`` measures accuracy).

``--tiny``: two random ``tiny_llava`` bases (the second reads tower hidden states ``[0, -1]``,
concatenated), seconds — a smoke test, not results.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .common import BenchResult, Run, Stats, Table, command_line, eprint, fmt_int, fmt_pct, md_table

NAME = "base_cost"
COMMAND = "plvm bench base-cost"
NOT_MEASURED_HERE = "not yet measured — run `plvm bench base-cost --projectors A,B`"
PLAIN_QUESTION = "Is there a person with glasses in this image?"
SHAPES = ("image_prompt", "plain")
SHAPE_LABELS = {
    "image_prompt": "image prompt (reference + query: 2 images)",
    "plain": "plain question (query only: 1 image)",
}
TINY_VISION_LAYERS = (-1, [0, -1])


# ---------------------------------------------------------------------- questions
@dataclass(frozen=True)
class Question:
    """One recognition question: ``<name>``'s reference portrait and a query scene (with them iff ``label``)."""

    name: str
    reference: Any  # PIL image, size × size
    query: Any  # PIL image, size × size
    label: bool


def recognition_questions(n: int, seed: int = 0, size: int = 224) -> list[Question]:
    """``n`` seeded questions about AvatarWorld (world seed 0) test identities; even indices are positives.

    Identities are drawn without replacement while there are enough (80 test identities), the name is the
    identity id (as in the rendered eval sets), the reference is the canonical portrait.
    """
    from ..synth.avatarworld import AvatarWorld

    world = AvatarWorld(seed=0)
    test = world.split("test")
    rng = np.random.default_rng([seed, 23])
    picks = rng.choice(len(test), size=n, replace=n > len(test))
    out = []
    for i, k in enumerate(picks.tolist()):
        identity, label = test[k], i % 2 == 0
        scene = (
            world.sample_scene(rng, split="test", include=[identity], size=size)
            if label
            else world.sample_scene(rng, split="test", exclude=[identity], size=size)
        )
        out.append(Question(identity.id, world.render_reference(identity, size=size), scene.image, label))
    return out


def image_prompt_conversation(question: Question) -> Any:
    """The harness's image-prompt layout: ``"Here is <n>: ⟨ref⟩.\\n⟨query⟩\\nIs <n> in this photo?"``."""
    from ..eval.prompts import IMAGE_PROMPT_TEMPLATE, IMAGE_SLOT, RECOGNITION_QUESTION, EvalConversation, with_name

    conv = EvalConversation()
    intro = IMAGE_PROMPT_TEMPLATE.format(name=question.name, image=IMAGE_SLOT)
    conv.raw_user(
        f"{intro}\n{IMAGE_SLOT}\n{with_name(RECOGNITION_QUESTION, question.name)}", [question.reference, question.query]
    )
    return conv


def plain_conversation(question: Question, text: str = PLAIN_QUESTION) -> Any:
    """``"⟨query⟩\\n<text>"``: one image, no concept."""
    from ..eval.prompts import IMAGE_SLOT, EvalConversation

    conv = EvalConversation()
    conv.raw_user(f"{IMAGE_SLOT}\n{text}", [question.query])
    return conv


# ---------------------------------------------------------------------- bases
@dataclass
class Base:
    """One base LVLM under test and what it is made of (``info`` is JSON-serialisable)."""

    label: str
    lvlm: Any  # PersonalizedLVLM
    build_s: float
    info: dict[str, Any] = field(default_factory=dict)


def _label(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"#{i + 1}"


def _shown_path(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it, else absolute."""
    path = path.resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def resolve_projectors(projectors: Sequence[str | os.PathLike]) -> list[Path]:
    """The committed projector (:func:`plvm.models.base.find_mini_projector`) first, then ``projectors``.

    A path given twice, or the committed one given explicitly, counts once (an explicit committed path keeps
    its position, so ``--projectors B,COMMITTED`` makes B the reference). Paths must exist (a file, or a
    stage-1 checkpoint directory).
    """
    from ..models.base import find_mini_projector

    given = [Path(p) for p in projectors]
    for p in given:
        if not p.exists():
            raise FileNotFoundError(f"projector not found: {p}")
    committed = find_mini_projector()
    out: list[Path] = []
    if committed is not None and all(p.resolve() != committed.resolve() for p in given):
        out.append(committed)
    for p in given:
        if all(p.resolve() != q.resolve() for q in out):
            out.append(p)
    if not out:
        raise FileNotFoundError("no projector given and no committed LLaVA-mini projector found")
    return out


def build_mini_base(label: str, projector: Path) -> Base:
    """LLaVA-mini from ``projector`` (a file, or a stage-1 checkpoint directory, exported to a temporary file
    as ``plvm eval-base`` does), wrapped as a :class:`PersonalizedLVLM`; timed."""
    from ..config import MINI_BASE_MODEL
    from ..injection import PersonalizedLVLM
    from ..models.base import load_base
    from ..models.llava_mini.assembly import (
        base_revision,
        export_stage1,
        feature_layer_str,
        projector_lora,
        projector_metadata,
    )

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="plvm-bench-base-") as tmp:
        path = projector
        if projector.is_dir():
            path, _ = export_stage1(projector, Path(tmp) / "projector.safetensors")
        model, processor = load_base("mini", projector=path)
        revision = base_revision(path)
        lvlm = PersonalizedLVLM(model, processor, base_model=MINI_BASE_MODEL, base_revision=revision)
        build_s = time.perf_counter() - t0
        lora = projector_lora(path)
        meta = projector_metadata(path)
    return Base(
        label,
        lvlm,
        build_s,
        {
            "projector": _shown_path(projector),
            "checkpoint_dir": projector.is_dir(),
            "revision": revision,
            "vision_feature_layer": feature_layer_str(model.config.vision_feature_layer),
            "lora": lora.name if lora is not None else None,
            "image_size": int(meta.get("image_size") or 0) or None,
            "projector_params": sum(p.numel() for p in model.model.multi_modal_projector.parameters()),
        },
    )


def build_tiny_base(label: str, vision_feature_layer: int | list[int], seed: int) -> Base:
    """A random ``tiny_llava`` reading tower hidden state(s) ``vision_feature_layer``; timed."""
    from ..injection import PersonalizedLVLM
    from ..models.llava_mini.assembly import feature_layer_str
    from ..models.tiny import tiny_llava
    from ..models.tiny_plvm import TINY_BASE_MODEL

    t0 = time.perf_counter()
    model, processor = tiny_llava(template="chatml", seed=seed, vision_feature_layer=vision_feature_layer)
    lvlm = PersonalizedLVLM(model, processor, base_model=TINY_BASE_MODEL)
    return Base(
        label,
        lvlm,
        time.perf_counter() - t0,
        {
            "projector": f"tiny random (seed {seed})",
            "checkpoint_dir": False,
            "revision": None,
            "vision_feature_layer": feature_layer_str(vision_feature_layer),
            "lora": None,
            "image_size": None,
            "projector_params": sum(p.numel() for p in model.model.multi_modal_projector.parameters()),
        },
    )


# ---------------------------------------------------------------------- benchmark
def time_bases(
    bases: Sequence[Base], convs: dict[str, list[Any]], repeats: int, warmup: int
) -> tuple[dict[str, dict[str, list[list[float]]]], dict[str, dict[str, list[float]]]]:
    """Per base label and shape: ms per question ``[repeats][queries]`` and the last log-odds ``[queries]``.

    ``convs[shape]`` holds one conversation per question; every call is ``score_yes_no([conv])`` (batch 1).
    Bases are interleaved per repeat, shapes per question.
    """
    n = len(next(iter(convs.values())))
    ms = {b.label: {s: [] for s in convs} for b in bases}
    logodds = {b.label: {s: [0.0] * n for s in convs} for b in bases}
    for _ in range(max(0, warmup)):
        for base in bases:
            for i in range(n):
                for shape in convs:
                    base.lvlm.score_yes_no([convs[shape][i]])
    for r in range(max(1, repeats)):
        for base in bases:
            row = {s: [] for s in convs}
            for i in range(n):
                for shape in convs:
                    t0 = time.perf_counter()
                    score = float(base.lvlm.score_yes_no([convs[shape][i]])[0])
                    row[shape].append((time.perf_counter() - t0) * 1e3)
                    logodds[base.label][shape][i] = score
            for shape in convs:
                ms[base.label][shape].append(row[shape])
        eprint(
            f"base-cost: repeat {r + 1}/{repeats}: "
            + ", ".join(f"{b.label} {s} {float(np.median(ms[b.label][s][-1])):.1f} ms" for b in bases for s in convs)
        )
    return ms, logodds


def bench_base_cost(
    projectors: Sequence[str | os.PathLike] = (),
    queries: int = 24,
    repeats: int = 3,
    warmup: int = 1,
    threads: int | None = None,
    tiny: bool = False,
    seed: int = 0,
    size: int = 224,
) -> BenchResult:
    """Build each base, then time one Yes/No answer per question on each, interleaved (module docstring).

    ``projectors``: extra projector files / checkpoint dirs after the committed one
    (:func:`resolve_projectors`); ignored with ``tiny``. ``size``: side of the rendered AvatarWorld images
    (the processor resizes them to the model's input, 168 px for LLaVA-mini).
    """
    paths = [] if tiny else resolve_projectors(projectors)
    command = command_line(
        COMMAND,
        [
            ("--tiny", tiny),
            ("--projectors", [_shown_path(p) for p in paths] or None),
            ("--queries", queries),
            ("--repeats", repeats),
            ("--warmup", warmup),
            ("--threads", threads),
        ],
    )
    run = Run(
        NAME,
        command,
        {
            "projectors": [_shown_path(p) for p in paths],
            "queries": queries,
            "repeats": repeats,
            "warmup": warmup,
            "seed": seed,
            "image_size": size,
        },
        threads,
        tiny,
    )
    result = run.result
    if tiny:
        bases = [build_tiny_base(_label(i), layer, seed=i) for i, layer in enumerate(TINY_VISION_LAYERS)]
    else:
        bases = []
        for i, path in enumerate(paths):
            eprint(f"base-cost: building base {_label(i)} from {path}")
            bases.append(build_mini_base(_label(i), path))
            gc.collect()
    questions = recognition_questions(queries, seed=seed, size=size)
    convs = {
        "image_prompt": [image_prompt_conversation(q) for q in questions],
        "plain": [plain_conversation(q) for q in questions],
    }
    labels = [q.label for q in questions]
    ms, logodds = time_bases(bases, convs, repeats, warmup)

    first = bases[0].label
    per_base = []
    for base in bases:
        entry: dict[str, Any] = {
            "label": base.label,
            **base.info,
            "build_s": base.build_s,
            "image_tokens_per_image": base.lvlm.image_inputs([questions[0].query])[0][0],
            "prompt_tokens": {},
            "ms_per_question": {},
            "ratio_to_first": {},
            "ratio_range_over_repeats": {},
            "logodds": logodds[base.label],
            "accuracy": {},
        }
        for shape in SHAPES:
            entry["prompt_tokens"][shape] = [len(base.lvlm.encode(c)) for c in convs[shape]]
            stats = Stats.of([x for rep in ms[base.label][shape] for x in rep], unit="ms")
            ref = Stats.of([x for rep in ms[first][shape] for x in rep], unit="ms").median
            entry["ms_per_question"][shape] = stats.to_dict()
            entry["ratio_to_first"][shape] = stats.median / ref
            per_repeat = [float(np.median(a) / np.median(b)) for a, b in zip(ms[base.label][shape], ms[first][shape])]
            entry["ratio_range_over_repeats"][shape] = [min(per_repeat), max(per_repeat)]
        entry["accuracy"]["image_prompt"] = _accuracy(labels, logodds[base.label]["image_prompt"])
        per_base.append(entry)
    result.data = {
        "questions": len(questions),
        "positives": sum(labels),
        "question_set": (
            f"AvatarWorld world seed 0, test split, question seed {seed}: {len(questions)} questions "
            f"({sum(labels)} with the person asked about), images rendered at {size} px"
        ),
        "shapes": {
            "image_prompt": {
                "label": SHAPE_LABELS["image_prompt"],
                "images": 2,
                "example": convs["image_prompt"][0].turns[0].text.replace("\ue002", "<image>"),
            },
            "plain": {
                "label": SHAPE_LABELS["plain"],
                "images": 1,
                "example": convs["plain"][0].turns[0].text.replace("\ue002", "<image>"),
            },
        },
        "bases": per_base,
    }
    result.tables = base_cost_tables(result.data, tiny)
    if tiny:
        result.notes.append("Bases: two random tiny_llava models (the second reads tower hidden states [0, -1]).")
    return run.finish()


def _accuracy(labels: Sequence[bool], scores: Sequence[float]) -> dict[str, float]:
    from .data import accuracy

    return accuracy(labels, [s > 0 for s in scores])


# ---------------------------------------------------------------------- tables
TITLE_TIME = "One recognition answer per base (`score_yes_no`, batch 1)"
TITLE_BUILD = "Start-up: building each base"


def _tokens(xs: Sequence[int]) -> str:
    lo, hi = min(xs), max(xs)
    return fmt_int(lo) if lo == hi else f"{fmt_int(lo)}–{fmt_int(hi)}"


def _one_line(text: str) -> str:
    return text.replace("\n", "\\n")


def base_cost_tables(data: dict[str, Any] | None, tiny: bool = False) -> list[Table]:
    """Two tables: ms per answer (rows = base × shape, ratio to the first base) and start-up per base."""
    time_headers = [
        "base",
        "reads tower layer(s)",
        "prompt",
        "prompt tokens",
        "ms per question (min / **median** / max)",
        "median ÷ base A's (range over repeats)",
    ]
    build_headers = ["base", "projector", "LM LoRA", "image tokens per image", "projector params", "build (s)"]
    if not data:
        return [
            Table(
                TITLE_TIME,
                md_table(
                    time_headers,
                    [[b, "-", SHAPE_LABELS[s], "-", NOT_MEASURED_HERE, "-"] for b in ("A", "B") for s in SHAPES],
                ),
            ),
            Table(
                TITLE_BUILD, md_table(build_headers, [[b, "-", "-", "-", "-", NOT_MEASURED_HERE] for b in ("A", "B")])
            ),
        ]
    bases = data["bases"]
    first = bases[0]["label"]
    time_headers[-1] = f"median ÷ base {first}'s (range over repeats)"
    rows = []
    for b in bases:
        for shape in SHAPES:
            st = Stats.from_dict(b["ms_per_question"][shape])
            lo, hi = b["ratio_range_over_repeats"][shape]
            ratio = f"**{b['ratio_to_first'][shape]:.2f}×** ({lo:.2f}–{hi:.2f})"
            rows.append(
                [
                    b["label"],
                    f"`{b['vision_feature_layer']}`",
                    SHAPE_LABELS[shape],
                    _tokens(b["prompt_tokens"][shape]),
                    st.fmt(digits=2 if tiny else 0),
                    ratio,
                ]
            )
    n = data["questions"]
    reps = Stats.from_dict(bases[0]["ms_per_question"][SHAPES[0]]).n // max(1, n)
    acc = "; ".join(f"{b['label']} {fmt_pct(b['accuracy']['image_prompt']['mean'], 0)}" for b in bases)
    note = (
        f"{data['question_set']}; each time is one question's `score_yes_no([conversation])` (preprocessing, "
        f"tokenization, one forward, Yes/No log-odds), {n} questions × {reps} repeats per base and prompt, bases "
        f"interleaved per repeat. Prompts (user turn, `\\n` = newline): "
        f"`{_one_line(data['shapes']['image_prompt']['example'])}` and "
        f"`{_one_line(data['shapes']['plain']['example'])}`. Image-prompt decision accuracy on these questions "
        f"(sanity check, not an evaluation): {acc}."
    )
    build_rows = [
        [
            b["label"],
            f"`{b['projector']}`" + (" (checkpoint dir)" if b.get("checkpoint_dir") else ""),
            f"`{b['lora']}`" if b.get("lora") else "-",
            fmt_int(b["image_tokens_per_image"]),
            fmt_int(b["projector_params"]),
            f"{b['build_s']:.2f}" if tiny else f"{b['build_s']:.1f}",
        ]
        for b in bases
    ]
    built = "`tiny_llava(…)`" if tiny else '`load_base("mini", projector=…)`'
    build_note = (
        f"Wall time of {built} + `PersonalizedLVLM`, once per base in this order (the first build also "
        "pays cold file caches and imports)."
    )
    return [
        Table(TITLE_TIME, md_table(time_headers, rows) + "\n\n" + note),
        Table(TITLE_BUILD, md_table(build_headers, build_rows) + "\n\n" + build_note),
    ]


__all__ = [
    "Base",
    "NOT_MEASURED_HERE",
    "PLAIN_QUESTION",
    "Question",
    "SHAPES",
    "base_cost_tables",
    "bench_base_cost",
    "build_mini_base",
    "build_tiny_base",
    "image_prompt_conversation",
    "plain_conversation",
    "recognition_questions",
    "resolve_projectors",
    "time_bases",
]
