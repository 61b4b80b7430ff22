"""``plvm diag …``: measurements that check a design in minutes before a long training run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from plvm.cli.common import fail

app = typer.Typer(no_args_is_help=True)


def _projector_file(projector: Optional[Path]) -> Path:
    """``projector``, or the committed base's; a missing file is one ``error:`` line."""
    from plvm.models.base import find_mini_projector

    projector = projector or find_mini_projector()
    if projector is None or not Path(projector).is_file():
        fail(f"no projector file {projector or '(none committed)'}")
    return Path(projector)


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
    from plvm.models.llava_mini.assembly import base_revision, build_llava_mini

    if threads:
        torch.set_num_threads(threads)
    projector = _projector_file(projector)
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


@app.command("attention-match")
def attention_match(
    projector: Optional[Path] = typer.Option(None, help="a LLaVA-mini projector file (default: the committed base)"),
    pairs: int = typer.Option(60, min=2, help="held-out twin pairs (a Yes and a No prompt each)"),
    portrait_share: float = typer.Option(0.5, min=0.0, max=1.0, help="share of pairs whose queries are portraits"),
    seed: int = typer.Option(0),
    head: Optional[str] = typer.Option(None, help="also report this 'layer,head' (e.g. the one a run supervised)"),
    top: int = typer.Option(10, min=1, help="how many of the best heads to list"),
    out: Optional[Path] = typer.Option(None, help="also write the result (every head's AUC) as JSON here"),
    threads: Optional[int] = typer.Option(None, min=1),
) -> None:
    """Does the base compare the two people of an image-prompt question? The Yes/No AUC on held-out twins, and
    which attention heads look from a query person's head onto the reference's head when it is the same person."""
    from dataclasses import asdict

    import torch

    from plvm.config import MINI_BASE_MODEL
    from plvm.diag.attention_match import AttentionProbeConfig, run_attention_probe, top_heads, twin_examples
    from plvm.injection import PersonalizedLVLM
    from plvm.models.llava_mini.assembly import base_revision, build_llava_mini

    named = None
    if head is not None:
        try:
            layer, h = (int(x) for x in head.split(","))
        except ValueError:
            fail(f"--head needs 'layer,head', e.g. 8,0; got {head!r}")
        named = (layer, h)
    if threads:
        torch.set_num_threads(threads)
    projector = _projector_file(projector)
    config = AttentionProbeConfig(pairs=pairs, portrait_share=portrait_share, seed=seed)
    model, processor = build_llava_mini(projector)
    text = model.config.text_config
    if named is not None and not (0 <= named[0] < text.num_hidden_layers and 0 <= named[1] < text.num_attention_heads):
        fail(f"--head {head}: the LM has {text.num_hidden_layers} layers × {text.num_attention_heads} heads")
    model.set_attn_implementation("eager")
    result = run_attention_probe(PersonalizedLVLM(model, processor, base_model=MINI_BASE_MODEL), twin_examples(config))
    answer = result["answer"]
    typer.echo(
        f"attention-match probe: {projector} ({base_revision(projector)}), {pairs} held-out twin pairs "
        f"({portrait_share:.0%} portraits), {result['n_query_heads']} query heads"
    )
    typer.echo(
        f"answer: Yes/No AUC {answer['auc']:.3f}, accuracy at 0 {answer['accuracy']:.3f}, "
        f"mean log-odds {answer['mean_pos']:+.2f} (Yes prompts) / {answer['mean_neg']:+.2f} (No prompts)"
    )
    typer.echo("heads (layer, head): AUC of attention onto the reference's head, named person vs the pair's others")
    typer.echo("  best: " + ", ".join(f"({layer}, {h}) {auc:.3f}" for layer, h, auc in top_heads(result["heads"], top)))
    typer.echo("  best per layer: " + " ".join(f"{max(row):.2f}" for row in result["heads"]))
    if named is not None:
        layer, h = named
        typer.echo(f"  head ({layer}, {h}): {result['heads'][layer][h]:.3f}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {"projector": str(projector), "base_revision": base_revision(projector), "config": asdict(config)}
        out.write_text(json.dumps({**record, **result}, indent=2) + "\n")
