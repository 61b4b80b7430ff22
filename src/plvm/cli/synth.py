"""``plvm synth …``: synthetic data (AvatarWorld; §3.3's IP-Adapter pipeline in :mod:`plvm.cli.ipadapter`)."""

from __future__ import annotations

import enum
import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from tqdm import tqdm

app = typer.Typer(
    help="Generate synthetic datasets for PLVM (AvatarWorld).", no_args_is_help=True, add_completion=False
)


class Split(str, enum.Enum):
    test = "test"
    train = "train"


class QueryKind(str, enum.Enum):
    scene = "scene"
    portrait = "portrait"


class Format(str, enum.Enum):
    plvm = "plvm"
    yollava = "yollava"
    multi = "multi"
    all = "all"


@app.callback()
def _synth() -> None:
    """Synthetic data generators."""


#: Share of a split used as concepts when --n-identities is not given (46 of the 80 default test ids).
CONCEPT_SHARE = 0.575


@app.command("avatarworld")
def avatarworld(
    out: Path = typer.Option(..., "--out", help="Output directory."),
    split: Split = typer.Option(Split.test, "--split", help="Which identities become the concepts."),
    seed: int = typer.Option(0, "--seed", help="World seed (identities and splits)."),
    size: int = typer.Option(224, "--size", help="Image side in pixels."),
    fmt: Format = typer.Option(
        Format.all,
        "--format",
        help="plvm -> OUT/plvm, yollava -> OUT/yollava, multi -> OUT/multi; all -> OUT/plvm "
        "and OUT/yollava, each with its multi/ folder.",
    ),
    contact_sheet_path: Optional[Path] = typer.Option(None, "--contact-sheet", help="Also write a contact sheet PNG."),
    num_identities: int = typer.Option(400, "--num-identities", help="Identities in the world."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Share of identities held out for test."),
    n_identities: Optional[int] = typer.Option(
        None, "--n-identities", help="Concepts in the set (default: 57.5% of the split, 46 for test)."
    ),
    queries_min: int = typer.Option(5, "--queries-min", help="Fewest query photos per concept."),
    queries_max: int = typer.Option(10, "--queries-max", help="Most query photos per concept."),
    n_text_qa: int = typer.Option(70, "--n-text-qa", help="Text-only multiple-choice questions."),
    n_multi2: int = typer.Option(150, "--n-multi2", help="Multi-concept images with 2 concepts."),
    n_multi3: int = typer.Option(150, "--n-multi3", help="Multi-concept images with 3 concepts."),
    n_external: int = typer.Option(50, "--n-external", help="External images with no known concept."),
    eval_seed: int = typer.Option(0, "--eval-seed", help="Seed of the photos and questions of the set."),
    query_kind: QueryKind = typer.Option(
        QueryKind.scene,
        "--query-kind",
        help="What a concept's query photos show: 'scene' (1-4 people) or 'portrait' "
        "(the concept alone, another photo of them; no visual QA).",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Render an AvatarWorld evaluation (or training) set and write it in PLVM / Yo'LLaVA / multi-concept layouts."""
    from plvm.synth.avatarworld import AvatarWorld, contact_sheet
    from plvm.synth.evalset import build_eval_set
    from plvm.synth.writers import count_images, write_multiconcept, write_plvm_format, write_yollava_format

    console = Console(stderr=True, quiet=quiet)
    t0 = time.perf_counter()
    world = AvatarWorld(seed=seed, num_identities=num_identities, test_fraction=test_fraction, size=size)
    pool = world.split(split.value)
    n = n_identities if n_identities is not None else max(1, int(round(CONCEPT_SHARE * len(pool))))
    console.print(
        f"AvatarWorld seed={seed}: {len(world.split('train'))} train / {len(world.split('test'))} test "
        f"identities; building the {split.value} set with {n} concepts"
    )
    with tqdm(total=1, desc="render", unit="img", disable=quiet) as bar:

        def on_progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        eval_set = build_eval_set(
            world,
            split=split.value,
            seed=eval_seed,
            n_identities=n,
            queries_per_identity=(queries_min, queries_max),
            n_text_qa=n_text_qa,
            n_multi2=n_multi2,
            n_multi3=n_multi3,
            n_external=n_external,
            size=size,
            query_kind=query_kind.value,
            progress=on_progress,
        )
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    with tqdm(total=count_images(eval_set, fmt.value), desc="write", unit="img", disable=quiet) as bar:
        if fmt in (Format.plvm, Format.all):
            written["plvm"] = str(write_plvm_format(eval_set, out / "plvm", progress=bar.update))
        if fmt in (Format.yollava, Format.all):
            written["yollava"] = str(write_yollava_format(eval_set, out / "yollava", progress=bar.update))
        if fmt == Format.all:  # multi/ next to each layout, where readers look for it
            for key in ("plvm", "yollava"):
                written[f"{key}/multi"] = str(write_multiconcept(eval_set, out / key, progress=bar.update))
        elif fmt == Format.multi:
            written["multi"] = str(write_multiconcept(eval_set, out, progress=bar.update))
    (out / "world.json").write_text(json.dumps(world.metadata(), indent=1) + "\n", encoding="utf-8")
    if contact_sheet_path is not None:
        contact_sheet_path.parent.mkdir(parents=True, exist_ok=True)
        contact_sheet(world, size=size, split=split.value).save(contact_sheet_path)
        written["contact_sheet"] = str(contact_sheet_path)
    m = eval_set.meta
    console.print(
        f"[bold]done[/] in {time.perf_counter() - t0:.1f}s: {m['n_identities']} concepts, "
        f"{m['n_queries']} queries, {m['n_text_qa']} text QA, {m['n_visual_qa']} visual QA, "
        f"{len(eval_set.multi)} multi-concept images"
    )
    for k, v in written.items():
        console.print(f"  {k}: {v}")


def _register_ipadapter() -> None:
    """§3.3's full-scale pipeline (diffusers, GPU) lives in its own module; its command joins this group."""
    from plvm.cli.ipadapter import ipadapter

    app.command("ipadapter")(ipadapter)


_register_ipadapter()
