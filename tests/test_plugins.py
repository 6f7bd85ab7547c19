from __future__ import annotations

import subprocess
import sys

import pytest

from tunekit import ConfigError, PluginError, TuneConfig, hookimpl
from tunekit.parts import PartOptions
from tunekit.plugins import get_plugins, get_registry, register_plugin


class _Opts(PartOptions):
    k: int = 1


class MyStrategy:
    name = "my-strategy"
    description = "test strategy"
    Options = _Opts
    default_learning_rate = 1e-3
    uses_adapters = False

    def __init__(self, options):
        self.options = options

    def check_quantizer(self, quantizer):
        return None

    def prepare(self, model, *, quantized):
        return model


class Plugin:
    @hookimpl
    def register_strategies(self, register):
        register(MyStrategy)


def test_builtins_are_registered_through_the_hooks():
    plugins = get_plugins()
    assert {"full", "head", "lora"} <= set(get_registry("strategy").names())
    assert set(get_registry("quantizer").names()) >= {"none", "bnb-8bit", "bnb-4bit"}
    assert set(get_registry("objective").names()) >= {"sft", "causal-lm"}
    assert set(get_registry("dataset_adapter").names()) >= {"records", "hf-dataset", "pandas", "files"}
    # every built-in went through pluggy, like a third-party plugin
    assert any(name.startswith("tunekit.builtin.") for name, _ in plugins.manager.list_name_plugin())


def test_plugin_registered_in_a_test_is_found_and_its_options_validated():
    register_plugin(Plugin(), name="my-plugin")
    reg = get_registry("strategy").get("my-strategy")
    assert reg.plugin == "my-plugin"
    cfg = TuneConfig(model="gpt2", strategy={"name": "my-strategy", "k": 3})
    assert cfg.strategy.options == {"k": 3}
    with pytest.raises(ConfigError, match="strategy.k"):
        TuneConfig(model="gpt2", strategy={"name": "my-strategy", "k": "x"})


def test_duplicate_name_names_both_plugins():
    register_plugin(Plugin(), name="first")

    class Again:
        @hookimpl
        def register_strategies(self, register):
            register(MyStrategy)

    with pytest.raises(PluginError, match="registered twice: by plugin 'first' and by plugin 'second'"):
        register_plugin(Again(), name="second")


def test_misspelt_hook_fails_loudly():
    class Typo:
        @hookimpl
        def register_stratgies(self, register):  # misspelt
            pass

    with pytest.raises(PluginError, match="does not have"):
        register_plugin(Typo(), name="typo")


def test_part_without_options_model_is_refused():
    class Bad:
        name = "bad"

    class P:
        @hookimpl
        def register_strategies(self, register):
            register(Bad)

    with pytest.raises(PluginError, match="Options"):
        register_plugin(P(), name="bad-plugin")


def test_lifecycle_hooks_called_during_fit(tiny_gpt2, tmp_path):
    from tests.conftest import quick

    from tunekit import Tuner
    from tunekit.testing import sft_rows

    calls = []

    class Watcher:
        @hookimpl
        def on_fit_start(self, tuner):
            calls.append("start")

        @hookimpl
        def on_log(self, tuner, step, logs):
            calls.append(("log", step))

        @hookimpl
        def on_fit_end(self, tuner, result):
            calls.append(("end", result.steps))

    register_plugin(Watcher(), name="watcher")
    Tuner(model=str(tiny_gpt2), strategy="lora", output_dir=str(tmp_path / "o"), training=quick(max_steps=3)).fit(sft_rows(8))
    assert calls[0] == "start" and calls[-1] == ("end", 3)
    assert ("log", 3) in calls


def test_cli_plugins_lists_parts_with_their_plugin():
    out = subprocess.run([sys.executable, "-m", "tunekit.cli", "plugins", "-v"], capture_output=True, text=True, check=True).stdout
    assert "strategys" not in out
    assert "strategies:" in out and "lora" in out and "tunekit (built-in)" in out
    assert "rank = 8" in out


def test_env_var_disables_entry_points(monkeypatch):
    from tunekit.plugins import build_plugins

    monkeypatch.setenv("TUNEKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins = build_plugins()
    assert all(p.startswith("tunekit.builtin") for p, _ in plugins.manager.list_name_plugin())
