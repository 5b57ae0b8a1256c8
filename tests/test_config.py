"""Config: YAML plus dotted overrides round trip; bad keys, types and values fail naming the key; shipped configs load;
every `rewardmap` subcommand answers --help."""

import re
from pathlib import Path

import pytest

from rewardmap.cli import COMMANDS, main
from rewardmap.config import config_to_yaml, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_yaml_then_overrides_round_trip(tmp_path):
    source = tmp_path / "run.yaml"
    source.write_text("trainer:\n  lr: 3.0e-6\ndata:\n  prompts_per_step: 4\n")
    config = load_config(source, ["trainer.lr=1e-5", "curriculum.stages=[{types: [TorF1], steps: 2}]"])
    assert config.trainer.lr == 1e-5, "an override beats the file"
    assert config.data.prompts_per_step == 4, "the file beats the default"
    assert config.curriculum.stages[0].types == ["TorF1"] and config.curriculum.stages[0].steps == 2
    saved = tmp_path / "saved.yaml"
    saved.write_text(config_to_yaml(config))
    assert load_config(saved) == config


def test_layered_files_apply_in_order():
    config = load_config([CONFIGS / "reward_map.yaml", CONFIGS / "train_sft_rl.yaml"])
    assert config.model.path == "data/sft_checkpoint" and config.trainer.lr == 1e-6


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.lrr=1"], "trainer.lrr"),
        (["data.prompts_per_step=many"], "data.prompts_per_step"),
        (["rollout.engine=tgi"], "rollout.engine='tgi'"),
        (["rollout.n=1"], "rollout.n=1"),
        (["trainer.micro_batch_tokens=0"], "trainer.micro_batch_tokens=0 must be >= 1, or null (off)"),
        (["nonsense"], "'nonsense' is not of the form"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(None, overrides)


def test_unknown_key_in_a_file_is_named(tmp_path):
    source = tmp_path / "bad.yaml"
    source.write_text("algorithm:\n  kl_coeff: 0.1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*algorithm\.kl_coeff"):
        load_config(source)


def test_recipe_config_holds_the_released_values():
    config = load_config(CONFIGS / "reward_map.yaml")
    assert (config.trainer.lr, config.algorithm.kl_coef, config.algorithm.kl_estimator) == (1e-6, 1e-2, "low_var_kl")
    assert (config.rollout.n, config.rollout.temperature, config.data.prompts_per_step) == (4, 1.0, 16)
    assert (config.data.max_response_length, config.algorithm.entropy_coef, config.curriculum.preset) == (
        2048,
        1e-3,
        "released",
    )
    assert config.rollout.engine == "vllm" and config.reward.variant == "released"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name != "sft.yaml"))
def test_shipped_configs_load(name):
    load_config(CONFIGS / name)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: rewardmap " + command in capsys.readouterr().out


def test_a_bad_override_is_one_line_on_stderr_not_a_traceback(capsys):
    assert main(["train", "--config", str(CONFIGS / "demo.yaml"), "trainer.lrr=1e-6"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("rewardmap train: config overrides: Key 'lrr' not in 'TrainerConfig' (key: trainer.lrr)")
    assert "Traceback" not in error
