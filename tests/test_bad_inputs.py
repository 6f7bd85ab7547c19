"""A table of bad inputs a user can give: each gets a TunekitError saying what, where, and what to do.

Property-based tests then feed random configs and rows to validation and the dataset
adapters: the only exceptions that come out are TunekitErrors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunekit import ConfigError, DataError, ModelLoadError, TuneConfig, TunekitError, Tuner, UnknownPartError
from tunekit.config import DataOptions
from tunekit.data.pipeline import prepare_rows
from tunekit.testing import sft_rows


def cfg(**kw: Any) -> Any:
    return lambda tmp, model: TuneConfig(model="gpt2", **kw)


def data(source: Any, **options: Any) -> Any:
    return lambda tmp, model: prepare_rows(source(tmp) if callable(source) else source, None, DataOptions(**options), seed=0)


def config_file(name: str, text: str) -> Any:
    def run(tmp: Path, model: Path) -> Any:
        (tmp / name).write_text(text)
        return Tuner.from_config(tmp / name)

    return run


def write(name: str, content: bytes) -> Any:
    def make(tmp: Path) -> str:
        (tmp / name).write_bytes(content)
        return str(tmp / name)

    return make


def fit(rows: Any, **kw: Any) -> Any:
    def run(tmp: Path, model: Path) -> Any:
        training = {"max_steps": 1, "progress_bar": False, **kw.pop("training", {})}
        return Tuner(model=str(model), output_dir=str(tmp / "out"), training=training, **kw).fit(rows)

    return run


# (id, action, expected error class, fragments the message must contain)
CASES = [
    # configuration values
    ("rank-zero", cfg(strategy={"name": "lora", "rank": 0}), ConfigError, ["strategy.rank", ">= 1"]),
    ("dropout-one", cfg(strategy={"name": "lora", "dropout": 1.0}), ConfigError, ["strategy.dropout", "< 1"]),
    ("lr-negative", cfg(training={"learning_rate": -0.1}), ConfigError, ["training.learning_rate", "> 0"]),
    ("batch-zero", cfg(training={"batch_size": 0}), ConfigError, ["training.batch_size", ">= 1"]),
    ("epochs-string", cfg(training={"epochs": "many"}), ConfigError, ["training.epochs", "number"]),
    ("scheduler-typo", cfg(training={"scheduler": "cosin"}), ConfigError, ["training.scheduler", "'cosine'"]),
    ("precision-typo", cfg(training={"precision": "bf32"}), ConfigError, ["training.precision", "'bf16'"]),
    ("unknown-top-level", cfg(stratgy="lora"), ConfigError, ["stratgy", "unknown option", "strategy"]),
    ("unknown-training-key", cfg(training={"lr": 1e-4}), ConfigError, ["training.lr", "learning_rate"]),
    ("unknown-strategy-option", cfg(strategy={"name": "lora", "r": 8}), ConfigError, ["strategy.r", "unknown option"]),
    ("max-length-tiny", cfg(training={"max_length": 2}), ConfigError, ["training.max_length", ">= 8"]),
    ("eval-fraction-one", cfg(data={"eval_fraction": 1.0}), ConfigError, ["data.eval_fraction", "< 1"]),
    ("target-modules-empty", cfg(strategy={"name": "lora", "target_modules": []}), ConfigError, ["strategy", "target_modules"]),
    ("full-on-4bit", cfg(strategy="full", quantizer="bnb-4bit"), ConfigError, ["strategy", "bnb-4bit", "lora"]),
    ("quant-type-typo", cfg(strategy="lora", quantizer={"name": "bnb-4bit", "quant_type": "nf5"}), ConfigError, ["quantizer.quant_type", "'nf4'"]),
    # part names
    ("unknown-strategy", cfg(strategy="loar"), UnknownPartError, ["strategy", "'lora'", "Installed"]),
    ("unknown-quantizer", cfg(quantizer="int4"), UnknownPartError, ["quantizer", "bnb-4bit"]),
    ("unknown-objective", cfg(objective="sfft"), UnknownPartError, ["objective", "'sft'"]),
    ("unknown-adapter", cfg(data={"adapter": "excel"}), UnknownPartError, ["data.adapter", "'files'"]),
    ("part-mapping-no-name", cfg(strategy={"rank": 4}), ConfigError, ["strategy", "'name'"]),
    # config files
    ("yaml-syntax", config_file("bad.yaml", "model: gpt2\nstrategy: [lora\n"), ConfigError, ["bad.yaml", "could not be parsed"]),
    ("toml-syntax", config_file("bad.toml", "model = 'gpt2\n"), ConfigError, ["bad.toml", "could not be parsed"]),
    ("yaml-not-mapping", config_file("list.yaml", "- gpt2\n"), ConfigError, ["list.yaml", "mapping"]),
    ("config-bad-value", config_file("run.yaml", "model: gpt2\ntraining:\n  max_steps: 0\n"), ConfigError, ["training.max_steps", ">= 1"]),
    ("config-missing", lambda tmp, model: Tuner.from_config(tmp / "nope.yaml"), ConfigError, ["nope.yaml", "not found"]),
    # data
    ("rows-empty", data([]), DataError, ["empty"]),
    ("rows-unknown-columns", data([{"question": "q", "answer": "a"}]), DataError, ["'question'", "data.columns"]),
    ("rows-wrong-type", data([{"prompt": ["x"], "completion": "y"}]), DataError, ["row 0", "'prompt'", "string"]),
    ("rows-not-dicts", data([("prompt", "completion")]), DataError, ["row 0", "dict"]),
    ("chat-unknown-role", data([{"messages": [{"role": "narrator", "content": "x"}]}]), DataError, ["message 0", "'narrator'", "assistant"]),
    ("chat-not-list", data([{"messages": {"role": "user"}}]), DataError, ["messages", "list"]),
    ("file-missing", data("nowhere.jsonl"), DataError, ["nowhere.jsonl", "does not exist"]),
    ("file-empty", data(write("e.jsonl", b"")), DataError, ["e.jsonl", "empty"]),
    ("file-bad-utf8", data(write("l.csv", b"prompt,completion\ncaf\xe9,x\n")), DataError, ["l.csv", "UTF-8", "line 2"]),
    ("file-bad-json", data(write("b.jsonl", b'{"text": "a"}\n{"text": ')), DataError, ["b.jsonl", "could not read"]),
    ("file-unsupported", data(write("d.xlsx", b"x")), DataError, ["d.xlsx", ".jsonl"]),
    ("columns-missing", data(sft_rows(2), columns={"q": "prompt"}), DataError, ["data.columns", "'q'"]),
    ("not-data", data(3.14), DataError, ["float", "list of dicts"]),
    ("row-longer-than-max", fit([{"prompt": "red " * 300, "completion": " blue"}], training={"max_length": 16}), DataError, ["max_length", "training.max_length"]),
    ("sft-on-text", fit([{"text": "hello"}], objective="sft"), ConfigError, ["objective", "'sft'", "causal-lm"]),
    # models
    ("model-path-missing", lambda tmp, model: Tuner(model=str(tmp / "no-model")).model, ModelLoadError, ["no-model", "does not exist"]),
    ("model-dir-no-config", lambda tmp, model: (tmp / "d").mkdir() or Tuner(model=str(tmp / "d")).model, ModelLoadError, ["config.json"]),
    ("gguf-missing", lambda tmp, model: Tuner(model=str(tmp / "x.gguf")).model, ModelLoadError, ["x.gguf", "does not exist"]),
    ("lora-target-missing", lambda tmp, model: Tuner(model=str(model), strategy={"name": "lora", "target_modules": ["q_proj"]}).model, ConfigError, ["strategy.target_modules", "c_attn"]),
    ("head-too-many-blocks", lambda tmp, model: Tuner(model=str(model), strategy={"name": "head", "last_n_blocks": 9}).model, ConfigError, ["strategy.last_n_blocks", "only 2 blocks"]),
    ("load-not-a-save", lambda tmp, model: Tuner.load(model), ModelLoadError, ["not a directory saved by tunekit", "Tuner(model=path)"]),
]


@pytest.mark.parametrize(("action", "error", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error(action, error, fragments, tmp_path, tiny_gpt2, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error) as info:
        action(tmp_path, tiny_gpt2)
    assert isinstance(info.value, TunekitError)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    assert "Traceback" not in message


def test_the_table_is_at_least_thirty_cases():
    assert len(CASES) >= 30


# -- property-based: random configs and rows only ever raise TunekitError ---------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
part = st.one_of(
    st.sampled_from(["lora", "full", "head", "none", "bnb-4bit", "bnb-8bit", "sft", "causal-lm", "nope"]),
    st.fixed_dictionaries({"name": st.sampled_from(["lora", "head", "bnb-4bit", "sft", "x"])}, optional={"rank": json_values, "dropout": json_values, "last_n_blocks": json_values, "quant_type": json_values, "packing": json_values}),
    json_values,
)
configs = st.fixed_dictionaries(
    {},
    optional={
        "model": json_values | st.just("gpt2"),
        "strategy": part,
        "quantizer": part,
        "objective": part,
        "training": st.dictionaries(st.sampled_from(["epochs", "max_steps", "learning_rate", "batch_size", "precision", "scheduler", "seed", "bogus"]), json_values, max_size=4),
        "data": st.dictionaries(st.sampled_from(["columns", "eval_fraction", "adapter", "chat_template", "train"]), json_values, max_size=3),
        "output_dir": json_values,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_random_configs_only_raise_tunekit_errors(raw):
    try:
        TuneConfig.model_validate(raw)
    except TunekitError:
        pass


row_values = st.one_of(st.text(max_size=10), st.integers(), st.none(), st.lists(st.text(max_size=4), max_size=2), st.lists(st.dictionaries(st.sampled_from(["role", "content"]), st.text(max_size=8) | st.integers(), max_size=2), max_size=2))
rows = st.lists(st.dictionaries(st.sampled_from(["text", "prompt", "completion", "messages", "instruction", "output", "input", "other"]), row_values, max_size=3), max_size=4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows)
def test_random_rows_only_raise_tunekit_errors(random_rows):
    try:
        prepare_rows(random_rows, None, DataOptions(), seed=0)
    except TunekitError:
        pass


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64), st.sampled_from([".jsonl", ".json", ".csv", ".txt"]))
def test_random_file_bytes_only_raise_tunekit_errors(tmp_path, content, suffix):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(content)
    try:
        prepare_rows(str(path), None, DataOptions(), seed=0)
    except TunekitError:
        pass
