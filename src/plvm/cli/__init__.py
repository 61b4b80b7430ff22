"""The ``plvm`` command line: one typer app, one module per command group.

==================  ==========================================================================
module              commands
==================  ==========================================================================
:mod:`.train`       ``train`` (the Aligner), ``train-base`` (LLaVA-mini's base), ``export``
:mod:`.evaluate`    ``eval`` (the harness), ``eval-base`` (LLaVA-mini without personalization)
:mod:`.product`     ``concepts …``, ``ask``, ``identify``, ``chat``, ``serve``
:mod:`.demo`        ``demo``, ``version``
:mod:`.synth`       ``synth avatarworld``, ``synth ipadapter`` (:mod:`.ipadapter`)
:mod:`.bench`       ``bench …`` (docs/BENCHMARKS.md)
:mod:`.diag`        ``diag identity-probe``
==================  ==========================================================================

The commands are thin: the training recipes are library functions over config dataclasses
(:mod:`plvm.training.recipe`, :mod:`plvm.models.llava_mini.recipe`; ``--config FILE`` reads one), the rest call
:mod:`plvm.pipeline`, :mod:`plvm.eval`, :mod:`plvm.bench`, :mod:`plvm.diag`. ``python -m plvm.cli`` is ``plvm``.
"""

from __future__ import annotations

import os

import typer

from plvm.cli import bench, demo, diag, evaluate, product, synth, train

app = typer.Typer(help="plvm — tuning-free personalization of vision-language models (PLVM).", no_args_is_help=True)
for group in (demo, train, evaluate):
    app.add_typer(group.app)
product.register(app)
app.add_typer(synth.app, name="synth", help="Synthesize data (AvatarWorld).")
app.add_typer(bench.app, name="bench", help="Benchmarks: what personalization costs (docs/BENCHMARKS.md).")
app.add_typer(diag.app, name="diag", help="Diagnostics: check a base or a design in minutes (identity probe).")


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app(prog_name="plvm")
