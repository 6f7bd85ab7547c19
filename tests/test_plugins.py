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


def _named_strategy(name):
    return type(name.title().replace("-", ""), (MyStrategy,), {"name": name})


def _registering(name, **marker):
    """A plugin whose register_strategies (marked with ``marker``) records its call and registers ``name``."""
    calls = []

    class P:
        @hookimpl(**marker)
        def register_strategies(self, register):
            calls.append(name)
            register(_named_strategy(name))

    return P(), calls


def test_register_hooks_are_called_through_pluggy_in_its_order():
    """pluggy calls later plugins first and tryfirst ones before them; parts register in that order."""
    first, order = _registering("s-first")
    middle, _ = _registering("s-tryfirst", tryfirst=True)
    last, _ = _registering("s-last")
    for plugin, name in ((first, "s-first"), (middle, "s-tryfirst"), (last, "s-last")):
        register_plugin(plugin, name=name)
    seen = [n for n in get_registry("strategy").names() if n.startswith("s-")]
    assert seen == ["s-tryfirst", "s-last", "s-first"]
    assert [get_registry("strategy").get(n).plugin for n in seen] == seen  # each credited to its plugin


@pytest.mark.parametrize("style", ["wrapper", "hookwrapper"])
def test_a_wrapper_of_a_register_hook_runs_around_the_others(style):
    """On the old code (impl.function called directly) a wrapper's generator was made and never run."""
    inner, calls = _registering("inner-part")
    events = calls  # the inner implementation appends its part's name when pluggy calls it

    class Wrapping:
        if style == "wrapper":

            @hookimpl(wrapper=True)
            def register_strategies(self, register):
                events.append("before")
                result = yield
                events.append("after")
                register(_named_strategy("from-wrapper"))
                return result

        else:

            @hookimpl(hookwrapper=True)
            def register_strategies(self, register):
                events.append("before")
                outcome = yield
                outcome.get_result()
                events.append("after")
                register(_named_strategy("from-wrapper"))

    register_plugin(inner, name="inner")
    events.clear()
    register_plugin(Wrapping(), name="wrapping")
    assert events == ["before", "inner-part", "after"]
    assert get_registry("strategy").get("from-wrapper").plugin == "wrapping"  # credited to the wrapper's plugin
    assert get_registry("strategy").get("inner-part").plugin == "inner"


def test_two_instances_of_one_plugin_class_are_credited_apart():
    class Named:
        def __init__(self, part):
            self.part = part

        @hookimpl
        def register_strategies(self, register):
            register(_named_strategy(self.part))

    register_plugin(Named("x-one"), name="one")
    register_plugin(Named("x-two"), name="two")
    assert get_registry("strategy").get("x-one").plugin == "one"
    assert get_registry("strategy").get("x-two").plugin == "two"


def test_register_kept_and_called_after_the_hook_is_an_error():
    kept = []

    class Keeper:
        @hookimpl
        def register_strategies(self, register):
            kept.append(register)

    register_plugin(Keeper(), name="keeper")
    with pytest.raises(PluginError, match="called after the hook"):
        kept[-1](MyStrategy)


def test_a_failing_plugin_leaves_the_registries_as_they_were():
    register_plugin(Plugin(), name="first")

    class Broken:
        @hookimpl
        def register_strategies(self, register):
            register(_named_strategy("half-done"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        register_plugin(Broken(), name="broken")
    assert "half-done" not in get_registry("strategy") and "my-strategy" in get_registry("strategy")
    assert not get_plugins().manager.has_plugin("broken")
    register_plugin(_registering("after-broken")[0], name="after")  # the manager still works
    assert "after-broken" in get_registry("strategy")


def test_a_plugin_name_registered_twice_is_a_plugin_error():
    register_plugin(Plugin(), name="same")
    with pytest.raises(PluginError, match="'same' .*already registered"):
        register_plugin(_registering("other")[0], name="same")


def test_reports_rank_a_plugin_metric_by_its_higher_is_better():
    """A metric's direction comes from its registered part, not from its name."""
    from tunekit.comparison.report import CandidateResult, CompareReport, RunRecord, is_higher_better
    from tunekit.parts import NoOptions

    class EditDistance:
        name = "edit_distance"
        description = "characters to change to reach the reference"
        Options = NoOptions
        needs = "generation"
        higher_is_better = False

        def __init__(self, options):
            pass

        def compute(self, inputs):
            return 0.0

    class Bleu(EditDistance):
        name = "chrf_loss_free"  # a name that reads like a loss but is better higher
        higher_is_better = True

    class Metrics:
        @hookimpl
        def register_metrics(self, register):
            register(EditDistance)
            register(Bleu)

    register_plugin(Metrics(), name="metrics")

    def candidate(name, **metrics):
        return CandidateResult(name=name, spec="lora", runs=[RunRecord(seed=0, ok=True, eval_loss=1.0, metrics=metrics)])

    report = CompareReport(
        tunekit_version="0", created="now", model="m", seeds=[0], train_data="t", output_dir="o",
        metrics=["loss", "edit_distance", "chrf_loss_free"],
        candidates=[candidate("near", edit_distance=2.0, chrf_loss_free=0.1), candidate("far", edit_distance=9.0, chrf_loss_free=0.8)],
    )
    assert report.best("edit_distance").name == "near"
    assert report.best("chrf_loss_free").name == "far"
    assert is_higher_better("edit_distance") is False and is_higher_better("perplexity") is False
    assert is_higher_better("eval_loss") is False  # the built-in `loss` metric says so
    assert is_higher_better("exact_match") is True and is_higher_better("peak_memory_mib") is False
    assert is_higher_better("not_installed_here") is None
