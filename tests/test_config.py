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


# -- reading config files: bounded and strict (tunekit.config_files) ---------------------------------


def test_alias_limit_is_exact(tmp_path):
    from tunekit.config import read_config_file
    from tunekit.config_files import MAX_ALIASES

    ok = tmp_path / "ok.yaml"
    ok.write_text("model: gpt2\nx: &x 1\nlist: [" + ", ".join(["*x"] * MAX_ALIASES) + "]\n")
    assert len(read_config_file(ok)["list"]) == MAX_ALIASES
    over = tmp_path / "over.yaml"
    over.write_text("model: gpt2\nx: &x 1\nlist: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n")
    with pytest.raises(ConfigError, match=f"more than {MAX_ALIASES} YAML aliases"):
        read_config_file(over)


def test_expansion_limit_catches_a_bomb_within_the_alias_limit(tmp_path, monkeypatch):
    from tunekit import config_files
    from tunekit.config import read_config_file

    monkeypatch.setattr(config_files, "MAX_EXPANDED_NODES", 1000)
    path = tmp_path / "bomb.yaml"
    path.write_text("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n")
    with pytest.raises(ConfigError, match="expands, through its YAML aliases, to more than 1,000 values"):
        read_config_file(path)


def test_size_limit_is_checked_before_reading(tmp_path):
    from tunekit.config import read_config_file
    from tunekit.config_files import MAX_CONFIG_BYTES

    path = tmp_path / "run.yaml"
    path.write_text("model: gpt2\n#" + "x" * (MAX_CONFIG_BYTES - 14) + "\n")
    assert path.stat().st_size == MAX_CONFIG_BYTES
    assert read_config_file(path) == {"model": "gpt2"}
    path.write_text("model: gpt2\n#" + "x" * (MAX_CONFIG_BYTES - 13) + "\n")
    with pytest.raises(ConfigError, match="at most 1 MiB"):
        read_config_file(path)


def test_utf8_bom_and_merge_keys_are_fine(tmp_path):
    from tunekit.config import read_config_file

    path = tmp_path / "run.yaml"
    path.write_bytes("\ufeffbase: &b {seed: 1, max_steps: 2}\nmodel: gpt2\ntraining: {<<: *b, seed: 3}\n".encode())
    assert read_config_file(path)["training"] == {"seed": 3, "max_steps": 2}


@pytest.mark.parametrize(("name", "text", "key", "line"), [
    ("a.yaml", "model: gpt2\ntraining:\n  seed: 1\n  seed: 2\n", "'seed'", "line 4"),
    ("a.json", '{"model": "gpt2",\n"training": {"seed": 1,\n "seed": 2}}', "'seed'", "line 3"),
    ("a.toml", 'model = "gpt2"\n[training]\nseed = 1\nseed = 2\n', "", "line 4"),
])
def test_duplicate_keys_name_the_key_and_line(tmp_path, name, text, key, line):
    from tunekit.config import read_config_file

    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as info:
        read_config_file(tmp_path / name)
    assert key in str(info.value) and line in str(info.value) and name in str(info.value)


def test_overwrite_is_never_read_from_a_file(tmp_path):
    from tunekit.config import read_config_file

    (tmp_path / "run.yaml").write_text("model: gpt2\noverwrite: true\n")
    with pytest.raises(ConfigError, match="pass --overwrite on the command line"):
        read_config_file(tmp_path / "run.yaml")


def test_cli_reports_a_config_file_problem_without_a_traceback(tmp_path, capsys):
    from tunekit.cli import main

    (tmp_path / "run.yaml").write_text("model: gpt2\noverwrite: true\n")
    assert main(["fit", str(tmp_path / "run.yaml")]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err
