"""One test per hook, and a check that every hookspec is documented and tested."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import pytest
from tests.conftest import quick

from tunekit import Tuner, hookimpl, hookspecs
from tunekit.data.rows import LoadedData
from tunekit.parts import NoOptions, PartOptions
from tunekit.plugins import get_registry, register_plugin
from tunekit.testing import sft_rows

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
HOOKS = sorted(n for n, f in vars(hookspecs).items() if callable(f) and n.startswith(("register_", "on_")))


def _signature(name: str) -> str:
    sig = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{name}({params}) -> {sig.return_annotation}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_section_headed_by_its_exact_signature(hook):
    headings = re.findall(r"^### `(.+)`$", DOCS.read_text(), flags=re.M)
    assert _signature(hook) in headings, f"docs/plugins.md needs a section '### `{_signature(hook)}`'"


def test_hook_register_strategies(tiny_gpt2, tmp_path):
    class EmbeddingsOnly:
        name = "embeddings-only"
        description = "train the input embeddings"
        Options = NoOptions
        default_learning_rate = 1e-2
        uses_adapters = False

        def __init__(self, options):
            pass

        def check_quantizer(self, quantizer):
            return None

        def prepare(self, model, *, quantized):
            for p in model.parameters():
                p.requires_grad_(False)
            model.get_input_embeddings().weight.requires_grad_(True)
            return model

    class Plugin:
        @hookimpl
        def register_strategies(self, register):
            register(EmbeddingsOnly)

    register_plugin(Plugin(), name="p")
    result = Tuner(model=str(tiny_gpt2), strategy="embeddings-only", output_dir=str(tmp_path / "r"), training=quick(max_steps=1)).fit(sft_rows(4))
    assert result.trainable_params == 400 * 64  # the (tied) embedding matrix


def test_hook_register_quantizers(tiny_gpt2):
    import torch

    class Fp64Base:
        name = "fp64-base"
        description = "load the base in float64"
        Options = NoOptions
        quantizes_base = False

        def __init__(self, options):
            pass

        def load_kwargs(self, compute_dtype):
            return {"dtype": torch.float64}

        def prepare_for_training(self, model, *, gradient_checkpointing):
            return model

    class Plugin:
        @hookimpl
        def register_quantizers(self, register):
            register(Fp64Base)

    register_plugin(Plugin(), name="p")
    tuner = Tuner(model=str(tiny_gpt2), strategy="full", quantizer="fp64-base")
    assert next(tuner.model.parameters()).dtype == torch.float64


def test_hook_register_dataset_adapters(tmp_path):
    class TSV:
        name = "tsv"
        description = "tab-separated prompt/completion"
        Options = NoOptions

        def __init__(self, options):
            pass

        def can_load(self, source):
            return isinstance(source, str) and source.endswith(".tsv")

        def load(self, source):
            from datasets import Dataset

            rows = [dict(zip(("prompt", "completion"), line.split("\t"), strict=True)) for line in Path(source).read_text().splitlines()]
            return LoadedData(Dataset.from_list(rows), None, source)

    class Plugin:
        @hookimpl
        def register_dataset_adapters(self, register):
            register(TSV)

    register_plugin(Plugin(), name="p")
    (tmp_path / "d.tsv").write_text("a\tb\nc\td\n")
    from tunekit.config import DataOptions
    from tunekit.data.pipeline import prepare_rows

    prepared = prepare_rows(str(tmp_path / "d.tsv"), None, DataOptions(), seed=0)  # picked automatically
    assert prepared.format == "prompt_completion" and prepared.train[1] == {"prompt": "c", "completion": "d"}


def test_hook_register_objectives(tiny_gpt2):
    from tunekit.models.loading import ModelSource, load_tokenizer
    from tunekit.testing.contracts import check_objective

    class Opts(PartOptions):
        keep_prompt: bool = False

    class PromptToo:
        name = "everything-but-eos"
        description = "loss on prompt and completion"
        Options = Opts

        def __init__(self, options):
            pass

        def accepts(self, row_format):
            return row_format == "prompt_completion"

        def tokenize(self, rows, tokenizer, *, max_length):
            def one(row):
                ids = tokenizer(row["prompt"] + row["completion"])["input_ids"][:max_length]
                return {"input_ids": ids, "labels": list(ids), "length": len(ids)}

            return rows.map(one, remove_columns=rows.column_names)

    class Plugin:
        @hookimpl
        def register_objectives(self, register):
            register(PromptToo)

    register_plugin(Plugin(), name="p")
    tokenizer = load_tokenizer(ModelSource("local", str(tiny_gpt2)))
    check_objective("everything-but-eos", tokenizer, masked=lambda row, ids: set())
    from tunekit import ConfigError, TuneConfig

    with pytest.raises(ConfigError, match="objective.keep_prompt"):
        TuneConfig(model="x", objective={"name": "everything-but-eos", "keep_prompt": "maybe"})


def test_hook_register_metrics(tiny_gpt2):
    class Length:
        name = "answer_length"
        description = "mean answer length"
        Options = NoOptions
        needs = "generation"
        higher_is_better = False

        def __init__(self, options):
            pass

        def compute(self, inputs):
            pairs = inputs.pairs(self.name)
            return sum(len(p) for p, _ in pairs) / len(pairs)

    class Plugin:
        @hookimpl
        def register_metrics(self, register):
            register(Length)

    register_plugin(Plugin(), name="p")
    result = Tuner(model=str(tiny_gpt2)).evaluate(sft_rows(3), metrics=["answer_length"], max_new_tokens=4)
    assert result.metrics["answer_length"] >= 0


def test_hook_register_rewards():
    from tunekit.config import build_rewards

    class WordCount:
        name = "word_count"
        description = "number of words"
        Options = NoOptions

        def __init__(self, options):
            pass

        def score(self, completions, *, prompts, references):
            return [float(len(c.split())) for c in completions]

    class Plugin:
        @hookimpl
        def register_rewards(self, register):
            register(WordCount)

    register_plugin(Plugin(), name="rewards-plugin")
    assert get_registry("reward").get("word_count").plugin == "rewards-plugin"
    (reward,) = build_rewards(["word_count"])
    assert reward.score(["a b c", ""], prompts=["p", "p"], references=[None, None]) == [3.0, 0.0]


def test_hook_register_model_aliases(tiny_gpt2):
    class Team:
        name = "team-base"
        description = "our base"
        Options = NoOptions

        def __init__(self, options=None):
            pass

        def resolve(self):
            return str(tiny_gpt2)

    class Plugin:
        @hookimpl
        def register_model_aliases(self, register):
            register(Team)

    register_plugin(Plugin(), name="p")
    assert "team-base" in get_registry("model_alias")
    assert Tuner(model="team-base", strategy="full").model.config.n_layer == 2


def test_hook_register_trainer_callbacks(tiny_gpt2, tmp_path):
    from transformers import TrainerCallback

    steps, begun = [], []

    class CountSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    class Begun(TrainerCallback):  # registered as a class: the Trainer makes the instance
        def on_train_begin(self, args, state, control, **kwargs):
            begun.append(state.max_steps)

    class P:
        @hookimpl
        def register_trainer_callbacks(self, register):
            register(CountSteps())
            register(Begun)

    _fit_with(P(), tiny_gpt2, tmp_path, max_steps=3)
    assert steps == [1, 2, 3] and begun == [3]


def test_a_trainer_callback_that_is_not_one_is_refused_naming_its_plugin(tiny_gpt2, tmp_path):
    from tunekit import PluginError

    class P:
        @hookimpl
        def register_trainer_callbacks(self, register):
            register(lambda *a: None)

    with pytest.raises(PluginError, match="plugin 'watcher' registered .* as a trainer callback"):
        _fit_with(P(), tiny_gpt2, tmp_path, max_steps=1)


def _fit_with(plugin, tiny_gpt2, tmp_path, **training):
    register_plugin(plugin, name="watcher")
    return Tuner(model=str(tiny_gpt2), output_dir=str(tmp_path / "r"), training=quick(**training)).fit(sft_rows(8), eval=sft_rows(2, seed=4))


def test_hook_on_fit_start(tiny_gpt2, tmp_path):
    seen = []

    class P:
        @hookimpl
        def on_fit_start(self, tuner):
            seen.append(tuner.model is not None)

    _fit_with(P(), tiny_gpt2, tmp_path, max_steps=1)
    assert seen == [True]


def test_hook_on_log(tiny_gpt2, tmp_path):
    seen = []

    class P:
        @hookimpl
        def on_log(self, tuner, step, logs):
            if "loss" in logs:
                seen.append(step)

    _fit_with(P(), tiny_gpt2, tmp_path, max_steps=3)
    assert seen == [1, 2, 3]


def test_hook_on_evaluate(tiny_gpt2, tmp_path):
    seen = []

    class P:
        @hookimpl
        def on_evaluate(self, tuner, step, metrics):
            seen.append((step, "eval_loss" in metrics))

    _fit_with(P(), tiny_gpt2, tmp_path, max_steps=2, eval_steps=1)
    assert seen == [(1, True), (2, True)]


def test_hook_on_fit_end(tiny_gpt2, tmp_path):
    seen = []

    class P:
        @hookimpl
        def on_fit_end(self, tuner, result):
            seen.append(result.steps)

    _fit_with(P(), tiny_gpt2, tmp_path, max_steps=2)
    assert seen == [2]


def test_api_version_mismatch_is_refused_with_names(monkeypatch):
    from tunekit.plugins import _api_mismatch

    module = type(sys)("old_plugin")
    module.TUNEKIT_API_VERSION = 0
    why = _api_mismatch(module, "old", "tunekit-old 0.3")
    assert "tunekit-old 0.3" in why and "targets plugin API 0" in why and f"speaks plugin API {hookspecs.API_VERSION}" in why
    assert "declares no plugin API version" in _api_mismatch(type(sys)("bare"), "bare", "bare 1.0")
    module.TUNEKIT_API_VERSION = hookspecs.API_VERSION
    assert _api_mismatch(module, "ok", "ok 1") is None


def test_broken_entry_point_is_skipped_unless_asked_for(monkeypatch, tmp_path):
    """A plugin that fails to import does not take the others down, unless asked for by name."""
    from importlib import metadata

    from tunekit import PluginError
    from tunekit.plugins import build_plugins

    class FakeDist:
        name, version = "tunekit-broken", "0.1"

    class BrokenEP:
        name, group, dist = "broken", "tunekit", FakeDist()

        def load(self):
            raise ImportError("No module named 'missing_dependency'")

    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [BrokenEP()] if group == "tunekit" else [])
    plugins = build_plugins()
    assert "broken" in plugins.failed and "missing_dependency" in plugins.failed["broken"]
    assert "lora" in plugins.registries["strategy"]  # the others still load
    assert "Plugin 'broken' could not be loaded" in plugins.registries["strategy"].unknown_message("brokens-strategy")
    monkeypatch.setenv("TUNEKIT_PLUGINS", "broken")
    with pytest.raises(PluginError, match="'broken' .*tunekit-broken.*failed to import.*missing_dependency"):
        build_plugins()
