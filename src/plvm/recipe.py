"""Training recipes as functions over config dataclasses, with config files.

A recipe (``plvm.training.recipe.train_aligner``, ``plvm.models.llava_mini.recipe.train_base``) takes one
frozen dataclass derived from :class:`RecipeConfig`. The same dataclass is what ``plvm train --config
FILE`` reads, what the CLI's flags override, and what a run writes to ``OUT/recipe.json`` so that
``--config OUT/recipe.json`` repeats it::

    cfg = BaseTrainingConfig.from_file("base.toml", steps=200)   # file, then overrides
    cfg.save("runs/x/recipe.json")
    assert BaseTrainingConfig.from_file("runs/x/recipe.json") == cfg

Files are JSON (``.json``) or TOML (``.toml``), one flat table whose keys are the dataclass's field names;
an unknown key, a value of the wrong type or a malformed file is a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import tomllib

C = TypeVar("C", bound="RecipeConfig")


class ConfigError(ValueError):
    """A recipe configuration (file, flag or field value) that cannot be used; the message says which."""


def _coerce(name: str, kind: Any, value: Any) -> Any:
    """``value`` as field ``name`` of type ``kind`` wants it (JSON/TOML scalars → Path, int → float), or raise."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (kind,) = [a for a in args if a is not type(None)]
    if kind is Path:
        if isinstance(value, (str, Path)) and str(value):
            return Path(value)
    elif kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this module does not know: a programming error
        raise TypeError(f"{name}: unsupported config field type {kind!r}")
    raise ConfigError(f"config key {name!r}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class RecipeConfig:
    """Base of the recipe configs: flat fields of type bool, int, float, str, Path (or ``Optional`` of them)."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def defaults(cls) -> types.SimpleNamespace:
        """The fields' default values, without building (and so validating) a config: what CLI options show."""
        return types.SimpleNamespace(**{f.name: f.default for f in dataclasses.fields(cls)})

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any], source: str = "config") -> C:
        """A config from ``values`` (missing keys take the defaults); unknown keys and bad types are refused."""
        names = cls.field_names()
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(
                f"{source}: unknown key{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))} (known: {', '.join(names)})"
            )
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(k, hints[k], v) for k, v in values.items()})

    @classmethod
    def from_file(cls: type[C], path: str | Path, **overrides: Any) -> C:
        """Read a JSON or TOML file, then apply ``overrides`` (field name → value) on top."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not text (expected JSON or TOML)") from None
        try:
            if path.suffix.lower() == ".toml":
                values: Any = tomllib.loads(text)
            elif path.suffix.lower() == ".json":
                values = json.loads(text)
            else:
                raise ConfigError(f"config file {path}: expected a .json or .toml file")
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path} is malformed: {exc}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path}: expected one table of keys, got {type(values).__name__}")
        recipe = values.pop("recipe", cls.__name__)  # the name :meth:`to_dict` records
        if recipe != cls.__name__:
            raise ConfigError(f"config file {path} is a {recipe}, not a {cls.__name__}")
        return cls.from_dict({**values, **overrides}, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (paths as strings), plus the recipe's name under ``"recipe"``."""
        out: dict[str, Any] = {"recipe": type(self).__name__}
        for k, v in dataclasses.asdict(self).items():
            out[k] = str(v) if isinstance(v, Path) else v
        return out

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)
