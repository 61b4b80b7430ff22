"""``plvm diag …``: measurements that check a design in minutes before a long training run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from plvm.cli.common import fail

app = typer.Typer(no_args_is_help=True)


@app.command("identity-probe")
def identity_probe(
    projector: Optional[Path] = typer.Option(None, help="a LLaVA-mini projector file (default: the committed base)"),
    gallery_ids: int = typer.Option(40, min=2, help="held-out (test-split) identities: one reference portrait each"),
    scenes_per_id: int = typer.Option(4, min=1, help="scenes of 1-3 people per gallery identity"),
    fit_ids: int = typer.Option(100, min=2, help="training identities the LDA adapter is fitted on"),
    fit_scenes_per_id: int = typer.Option(3, min=1),
    seed: int = typer.Option(0),
    out: Optional[Path] = typer.Option(None, help="also write the result as JSON here"),
    threads: Optional[int] = typer.Option(None, min=1),
) -> None:
    """How separable held-out people are in a base's image tokens: re-ID top-1 / AUC of head regions against
    reference portraits, zero-shot (cosine) and through an LDA adapter fitted on training identities."""
    import torch

    from plvm.diag.identity_probe import ProbeConfig, run_identity_probe
    from plvm.models.base import find_mini_projector
    from plvm.models.llava_mini.assembly import base_revision, build_llava_mini

    if threads:
        torch.set_num_threads(threads)
    projector = projector or find_mini_projector()
    if projector is None or not Path(projector).is_file():
        fail(f"no projector file {projector or '(none committed)'}")
    config = ProbeConfig(
        gallery_ids=gallery_ids,
        scenes_per_id=scenes_per_id,
        fit_ids=fit_ids,
        fit_scenes_per_id=fit_scenes_per_id,
        seed=seed,
    )
    model, processor = build_llava_mini(projector)
    result = {
        "projector": str(projector),
        "base_revision": base_revision(projector),
        **run_identity_probe(model, processor.image_processor, config),
    }
    typer.echo(
        f"identity probe: {projector} ({result['base_revision']}), {gallery_ids} held-out identities, "
        f"{gallery_ids * scenes_per_id} scene appearances"
    )
    typer.echo(f"{'features':<34}{'zero-shot top-1 / AUC':>24}{'adapter top-1 / AUC':>24}")
    for key, label in (("tower", "vision tower (projector input)"), ("tokens", "image tokens (projector output)")):
        z, a = result[key]["zero_shot"], result[key]["adapter"]
        typer.echo(f"{label:<34}{z['top1']:>14.3f} / {z['auc']:.3f}{a['top1']:>14.3f} / {a['auc']:.3f}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
