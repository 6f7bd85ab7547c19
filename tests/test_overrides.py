"""Overrides merge key by key everywhere: Tuner(config, **overrides), from_config, load, compare."""

from __future__ import annotations

import pytest

from tunekit import TuneConfig, Tuner
from tunekit.comparison.candidates import merge_config
from tunekit.config_merge import merge_overrides


def _cfg(model: str) -> TuneConfig:
    return TuneConfig(
        model=model,
        strategy={"name": "lora", "rank": 8, "alpha": 32},
        training={"batch_size": 2, "learning_rate": 1e-3, "max_length": 64, "seed": 7, "progress_bar": False},
        data={"columns": {"q": "prompt"}},
    )


def test_training_override_keeps_the_other_training_fields(tiny_gpt2):
    tuner = Tuner(_cfg(str(tiny_gpt2)), training={"max_steps": 3})
    t = tuner.config.training
    assert t.max_steps == 3
    assert (t.batch_size, t.learning_rate, t.max_length, t.seed, t.progress_bar) == (2, 1e-3, 64, 7, False)
    # the same through a mapping config
    tuner = Tuner(_cfg(str(tiny_gpt2)).model_dump(), training={"max_steps": 3}, data={"eval_fraction": 0.25})
    assert tuner.config.training.batch_size == 2 and tuner.config.training.max_steps == 3
    assert tuner.config.data.columns == {"q": "prompt"} and tuner.config.data.eval_fraction == 0.25


def test_a_part_named_the_same_merges_options_and_another_name_replaces_it(tiny_gpt2):
    base = _cfg(str(tiny_gpt2))
    same = Tuner(base, strategy={"name": "lora", "rank": 4}).config.strategy
    assert same.name == "lora" and same.options["rank"] == 4 and same.options["alpha"] == 32
    assert Tuner(base, strategy="lora").config.strategy.options["rank"] == 8
    other = Tuner(base, strategy="full").config.strategy
    assert other.name == "full" and "rank" not in other.options
    # nested "options" form and PartSpec objects follow the same rule
    assert merge_overrides({"strategy": {"name": "lora", "options": {"rank": 8}}}, {"strategy": {"name": "lora", "alpha": 4}}) == {
        "strategy": {"name": "lora", "rank": 8, "alpha": 4}
    }
    assert merge_overrides({"objective": None}, {"objective": "sft"}) == {"objective": "sft"}
    assert merge_overrides({"objective": "sft"}, {"objective": None}) == {"objective": None}


def test_from_config_and_load_merge_overrides(tiny_gpt2, tmp_path):
    path = _cfg(str(tiny_gpt2)).to_file(tmp_path / "run.yaml")
    tuner = Tuner.from_config(path, training={"max_steps": 3})
    assert tuner.config.training.max_steps == 3 and tuner.config.training.batch_size == 2
    assert tuner.config.strategy.options["alpha"] == 32

    saved = tmp_path / "saved"
    Tuner(_cfg(str(tiny_gpt2))).save(saved)
    loaded = Tuner.load(saved, training={"max_steps": 5})
    assert loaded.config.training.max_steps == 5
    assert (loaded.config.training.batch_size, loaded.config.training.seed) == (2, 7)
    assert loaded.config.strategy.options["rank"] == 8


def test_compare_merges_with_the_same_rule():
    merged = merge_config(
        {"model": "m", "strategy": {"name": "lora", "rank": 8, "alpha": 16}, "data": {"adapter": {"name": "jsonl", "x": 1}}},
        {"strategy": {"name": "lora", "rank": 32}, "data": {"columns": {"a": "prompt"}}},
    )
    assert merged == {
        "model": "m",
        "strategy": {"name": "lora", "rank": 32, "alpha": 16},
        "data": {"adapter": {"name": "jsonl", "x": 1}, "columns": {"a": "prompt"}},
    }


def test_invalid_overrides_are_still_config_errors(tiny_gpt2):
    from tunekit.errors import ConfigError

    with pytest.raises(ConfigError, match="training.batch_size"):
        Tuner(_cfg(str(tiny_gpt2)), training={"batch_size": 0})
