"""``plvm demo`` (one held-out AvatarWorld person on LLaVA-mini, end to end) and ``plvm version``."""

from __future__ import annotations

from pathlib import Path

import typer

from plvm.cli.common import fail

app = typer.Typer()


@app.command()
def version() -> None:
    """Print the plvm version."""
    import plvm

    typer.echo(plvm.__version__)


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

    from plvm.conversation import Conversation
    from plvm.pipeline import PLVM, IncompatibleAlignerError
    from plvm.synth.avatarworld import AvatarWorld

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
    from plvm.synth import qa

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
    for label, scene in (("scene_with_bo.png", with_bo), ("scene_without_bo.png", without_bo)):
        # the caption should name <bo> in the first scene only
        t1 = time.time()
        typer.echo(f"[{label}] Can you see <bo> in the image? ... Your caption:\n  ", nl=False)
        conv = Conversation([bo])
        conv.user(
            "Can you see <bo> in the image? Don't answer the question, but remember it, and only respond with a "
            "detailed caption for the image. Your caption:",
            image=scene.image,
        )
        caption = plvm.lvlm.generate(conv, max_new_tokens=60, on_text=lambda t: typer.echo(t, nl=False)).text
        typer.echo(f"  ({time.time() - t1:.1f} s; names <bo>: {'yes' if '<bo>' in caption else 'no'})")
    typer.echo(f"\ntotal {time.time() - t0:.1f} s")
