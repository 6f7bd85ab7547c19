from __future__ import annotations

import pytest

from tunekit import ConfigError, TuneConfig, Tuner, UnknownPartError


def test_part_by_name_or_mapping_round_trips():
    cfg = TuneConfig(model="gpt2", strategy={"name": "lora", "rank": 16, "target_modules": "mlp"})
    assert cfg.strategy.name == "lora"
    assert cfg.strategy.options["rank"] == 16
    assert cfg.strategy.options["dropout"] == 0.0  # defaults filled in
    dumped = cfg.model_dump()
    assert dumped["strategy"]["rank"] == 16 and dumped["strategy"]["name"] == "lora"
    assert TuneConfig.model_validate(dumped) == cfg
    assert TuneConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def test_all_problems_reported_together_with_dotted_locations():
    with pytest.raises(ConfigError) as info:
        TuneConfig(
            model="gpt2",
            strategy={"name": "lora", "rank": 0, "dropout": 2},
            training={"learning_rate": -1, "batch_size": 0},
        )
    locations = {p.location for p in info.value.problems}
    assert locations == {"strategy.rank", "strategy.dropout", "training.learning_rate", "training.batch_size"}
    assert "strategy.rank: must be >= 1 (got 0)" in str(info.value)


def test_unknown_part_names_installed_and_closest():
    with pytest.raises(UnknownPartError) as info:
        TuneConfig(model="gpt2", strategy="lroa")
    msg = str(info.value)
    assert "Did you mean 'lora'" in msg and "'full'" in msg and "'head'" in msg


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ConfigError) as info:
        TuneConfig(model="gpt2", strategy={"name": "lora", "rnak": 4})
    assert "strategy.rnak: unknown option 'rnak'" in str(info.value)
    with pytest.raises(ConfigError, match="training.epoch: unknown option 'epoch'; valid options here: epochs"):
        TuneConfig(model="gpt2", training={"epoch": 1})


def test_full_finetune_of_quantized_base_is_refused_at_validation():
    with pytest.raises(ConfigError, match="strategy: 'full' .* Use strategy='lora'"):
        TuneConfig(model="gpt2", strategy="full", quantizer="bnb-4bit")
    with pytest.raises(ConfigError, match="strategy: 'head' cannot train on a 'bnb-8bit' base"):
        TuneConfig(model="gpt2", strategy="head", quantizer="bnb-8bit")
    TuneConfig(model="gpt2", strategy="lora", quantizer="bnb-4bit")  # QLoRA is fine


def test_part_mapping_without_name():
    with pytest.raises(ConfigError, match="strategy: .*needs a 'name' key"):
        TuneConfig(model="gpt2", strategy={"rank": 4})


def test_model_is_required():
    with pytest.raises(ConfigError, match="model: is required"):
        TuneConfig()


@pytest.mark.parametrize("suffix", [".yaml", ".toml", ".json"])
def test_from_config_files(tmp_path, suffix):
    text = {
        ".yaml": "model: gpt2\nstrategy:\n  name: lora\n  rank: 4\ntraining:\n  max_steps: 3\n",
        ".toml": 'model = "gpt2"\n[strategy]\nname = "lora"\nrank = 4\n[training]\nmax_steps = 3\n',
        ".json": '{"model": "gpt2", "strategy": {"name": "lora", "rank": 4}, "training": {"max_steps": 3}}',
    }[suffix]
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    tuner = Tuner.from_config(path)
    assert tuner.config.strategy.options["rank"] == 4
    assert tuner.config.training.max_steps == 3


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("bad.yaml", "model: [unclosed\n", "could not be parsed"),
        ("bad.toml", "model = \n", "could not be parsed"),
        ("list.yaml", "- a\n- b\n", "must hold a mapping"),
        ("run.ini", "x", "unsupported config file type"),
    ],
)
def test_bad_config_files(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        TuneConfig.from_file(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Tuner.from_config(tmp_path / "nope.yaml")


def test_to_file_round_trips(tmp_path):
    cfg = TuneConfig(model="gpt2", strategy={"name": "lora", "rank": 4}, quantizer={"name": "bnb-4bit", "quant_type": "fp4"})
    assert TuneConfig.from_file(cfg.to_file(tmp_path / "c.yaml")) == cfg


def test_precision_the_hardware_cannot_honour_is_an_error():
    import torch

    from tunekit import HardwareError

    if torch.cuda.is_available():
        pytest.skip("this checks the CPU path")
    with pytest.raises(HardwareError, match="needs a GPU"):
        Tuner(model="gpt2", training={"precision": "fp16"})
    assert Tuner(model="gpt2").precision.name == "fp32"


def test_model_validate_reports_each_problem_once():
    with pytest.raises(ConfigError) as info:
        TuneConfig.model_validate({"model": "gpt2", "strategy": {"name": "lora", "rank": 0}, "training": {"seed": -1}})
    assert [p.location for p in info.value.problems] == ["training.seed", "strategy.rank"]
    with pytest.raises(UnknownPartError):
        TuneConfig.model_validate({"model": "gpt2", "strategy": "lroa"})
