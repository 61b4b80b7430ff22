"""Recipe configs: files round-trip, flags override a file, unknown keys and bad values are refused, and the
CLI's options are exactly the config's fields (so ``--config`` and flags can never drift apart)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from plvm.cli import app
from plvm.models.llava_mini.recipe import BaseTrainingConfig
from plvm.recipe import ConfigError
from plvm.training.recipe import AlignerTrainingConfig


@pytest.fixture
def captured(monkeypatch):
    """Replace both recipes by recorders: the CLI's job ends where the recipe begins."""
    import plvm.models.llava_mini.recipe as base_recipe
    import plvm.training.recipe as aligner_recipe

    seen: list = []
    monkeypatch.setattr(base_recipe, "train_base", lambda cfg, log=print: seen.append(cfg) or {})
    monkeypatch.setattr(aligner_recipe, "train_aligner", lambda cfg, log=print: seen.append(cfg) or {})
    return seen


@pytest.mark.parametrize("cls", [AlignerTrainingConfig, BaseTrainingConfig])
def test_a_saved_config_reads_back_equal_as_json_and_toml(tmp_path, cls):
    cfg = cls(out=tmp_path / "run", steps=7, lr=0.25, seed=3, threads=2)
    path = cfg.save(tmp_path / "recipe.json")
    assert json.loads(path.read_text())["recipe"] == cls.__name__
    assert cls.from_file(path) == cfg
    toml = tmp_path / "recipe.toml"  # TOML has no null: an unset Optional is a missing key
    toml.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in cfg.to_dict().items() if v is not None))
    assert cls.from_file(toml) == cfg
    assert cls.from_file(path, steps=9) == dataclasses.replace(cfg, steps=9)


def test_flags_given_on_the_command_line_override_the_file_and_defaults_do_not(tmp_path, captured):
    config = tmp_path / "base.json"
    config.write_text(
        json.dumps(
            {
                "out": str(tmp_path / "run"),
                "steps": 5,
                "lr": 0.01,
                "lora_r": 16,
                "mix": "0,0,0,1",
                "freeze_projector": True,
            }
        )
    )
    result = CliRunner().invoke(app, ["train-base", "--config", str(config), "--lr", "0.002", "--steps", "1500"])
    assert result.exit_code == 0, result.output
    (cfg,) = captured
    # --steps 1500 is the default value, but given explicitly: it wins over the file's 5
    assert cfg == BaseTrainingConfig(
        out=tmp_path / "run", steps=1500, lr=0.002, lora_r=16, mix="0,0,0,1", freeze_projector=True
    )


def test_without_a_file_the_flags_are_the_config(tmp_path, captured):
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--out",
            str(tmp_path / "a"),
            "--k",
            "4",
            "--steps",
            "3",
            "--freeze-context",
            "--no-calibrate",
        ],
    )
    assert result.exit_code == 0, result.output
    assert captured == [
        AlignerTrainingConfig(out=tmp_path / "a", num_queries=4, steps=3, freeze_context=True, calibrate=False)
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        ({"steps": 5, "stepz": 3}, "unknown key 'stepz'"),
        ({"steps": "many"}, "'steps': expected int"),
        ({"lr": True}, "'lr': expected float"),
        ({"recipe": "AlignerTrainingConfig"}, "is a AlignerTrainingConfig, not a BaseTrainingConfig"),
        ({"mix": "1,2"}, "--mix"),
        ([1, 2], "expected one table"),
    ],
)
def test_a_bad_config_file_is_one_error_line_and_nothing_runs(tmp_path, captured, content, message):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps(content))
    result = CliRunner().invoke(app, ["train-base", "--config", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert captured == [] and not (tmp_path / "run").exists()


def test_malformed_missing_or_foreign_files_are_refused(tmp_path):
    (tmp_path / "a.toml").write_text("steps = [")
    (tmp_path / "a.yaml").write_text("steps: 3")
    (tmp_path / "b.json").write_bytes(b"\xff\xfe\x00binary")
    for path, message in (
        (tmp_path / "a.toml", "malformed"),
        (tmp_path / "nope.json", "cannot read"),
        (tmp_path / "b.json", "not text"),
        (tmp_path, "cannot read"),
        (tmp_path / "a.yaml", ".json or .toml"),
    ):
        with pytest.raises(ConfigError, match=message):
            BaseTrainingConfig.from_file(path)


def test_configs_check_what_needs_no_model():
    with pytest.raises(ConfigError, match="unknown preset"):
        AlignerTrainingConfig(preset="llava-99b")
    with pytest.raises(ConfigError, match="head_anchor_references.*avatarworld"):
        AlignerTrainingConfig(data="/some/folder", head_anchor_references=100)
    with pytest.raises(ConfigError, match="portrait_query_share.*avatarworld"):
        AlignerTrainingConfig(data="/some/folder", portrait_query_share=0.5)
    with pytest.raises(ConfigError, match=r"portrait_query_share must be in \[0, 1\]"):
        AlignerTrainingConfig(portrait_query_share=1.5)
    with pytest.raises(ConfigError, match="no such file"):
        AlignerTrainingConfig(init_aligner=Path("/nonexistent/aligner.safetensors"))
    with pytest.raises(ConfigError, match="base_projector.*no such file"):
        AlignerTrainingConfig(base_projector=Path("/nonexistent/projector.safetensors"))
    with pytest.raises(ConfigError, match="base_projector.*mini preset"):
        AlignerTrainingConfig(preset="llava-1.5-7b", base_projector=Path("/nonexistent/projector.safetensors"))
    with pytest.raises(ConfigError, match="no such file"):
        BaseTrainingConfig(init_lora=Path("/nonexistent/lm_lora.safetensors"))
    assert BaseTrainingConfig(mix="0.1,0.4,0.1,0.4").mix_weights() == (0.1, 0.4, 0.1, 0.4)
    assert BaseTrainingConfig(vqa_kinds="hair_color=3,glasses=1").open_kinds() == {"hair_color": 3.0, "glasses": 1.0}
    with pytest.raises(ConfigError, match="--vqa-kinds"):
        BaseTrainingConfig(vqa_kinds="hair_colour=3")


@pytest.mark.parametrize("command, cls", [("train", AlignerTrainingConfig), ("train-base", BaseTrainingConfig)])
def test_the_command_options_are_the_config_fields_with_the_same_defaults(command, cls):
    group = typer.main.get_command(app)
    params = {p.name: p for p in group.commands[command].params if p.param_type_name == "option"}
    assert set(params) - {"config"} == set(cls.field_names())
    for f in dataclasses.fields(cls):
        default = params[f.name].default
        assert (Path(default) if isinstance(f.default, Path) else default) == f.default, f.name
