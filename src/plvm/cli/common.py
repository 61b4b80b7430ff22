"""What the command groups of :mod:`plvm.cli` share: one-line errors and recipe configs from flags + files."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn, TypeVar

import typer

from plvm.recipe import ConfigError, RecipeConfig

C = TypeVar("C", bound=RecipeConfig)

CONFIG_HELP = (
    "a JSON or TOML file of this command's options (keys: the option names with '_'; a run's "
    "OUT/recipe.json repeats it); flags given on the command line override it"
)


def fail(message: str, code: int = 2) -> NoReturn:
    """One red ``error: …`` line on stderr and exit status ``code`` (no traceback)."""
    typer.secho(f"error: {' '.join(message.split())}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def recipe_config(ctx: typer.Context, cls: type[C], config_file: Path | None) -> C:
    """The command's recipe config: ``config_file`` (if any), then every flag given on the command line.

    Each option of the command is a field of ``cls`` (same name); an option left at its default does not
    override the file. A bad file or value ends the command with one ``error:`` line."""
    values = {k: v for k, v in ctx.params.items() if k != "config"}
    try:
        if config_file is None:
            return cls.from_dict(values, source="options")
        # by name: typer vendors its own click, whose ParameterSource is not click's
        given = {
            k: v
            for k, v in values.items()
            if getattr(ctx.get_parameter_source(k), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")
        }
        return cls.from_file(config_file, **given)
    except ConfigError as exc:
        fail(str(exc))
