"""training.report_to (trackers read back with their own readers), optimizer, early_stopping, neftune_alpha
and data.add_tokens, on tiny models."""

from __future__ import annotations

import json

import pytest
from tests.conftest import quick

from tunekit import ConfigError, TunekitError, Tuner
from tunekit.testing import sft_rows


def _fit(model, out, rows=None, *, data=None, metrics=None, strategy="lora", **training):
    tuner = Tuner(model=str(model), strategy=strategy, output_dir=str(out), training=quick(**training), data=data or {})
    return tuner, tuner.fit(rows or sft_rows(48), metrics=metrics)


# -- trackers ------------------------------------------------------------------------------------
def test_tensorboard_event_files_hold_the_logged_losses_and_tunekits_figures(tiny_llama, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, result = _fit(tiny_llama, tmp_path / "run", report_to="tensorboard", data={"eval_fraction": 0.25})
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert logged == [(p.step, pytest.approx(p.loss, rel=1e-6)) for p in result.loss_history]
    assert len(logged) == result.steps  # logging_steps=1
    assert events.Scalars("train/trainable_params")[0].value == result.trainable_params
    assert events.Scalars("train/final_loss")[0].value == pytest.approx(result.eval_loss, rel=1e-6)
    marker = json.loads((tmp_path / "run" / ".tunekit-run.json").read_text())
    assert marker["entries"]["tensorboard"] == "dir"  # tunekit's own: an overwrite may replace it


def test_mlflow_file_store_holds_the_logged_losses(tiny_llama, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient  # mlflow-skinny, in the test extra

    store = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tunekit-test")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 keeps its file store only on request
    _, result = _fit(tiny_llama, tmp_path / "run", report_to=["mlflow"], run_name="tiny-run", data={"eval_fraction": 0.25})
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("tunekit-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tiny-run"
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    assert history == [(p.step, pytest.approx(p.loss, rel=1e-6)) for p in result.loss_history]
    assert run.data.metrics["final_loss"] == pytest.approx(result.eval_loss, rel=1e-6)


def test_unknown_or_missing_tracker_is_refused_before_training(tiny_llama, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbored'.*tensorboard"):
        _fit(tiny_llama, tmp_path / "a", report_to="tensorbored")
    import transformers.integrations.integration_utils as integrations

    monkeypatch.setattr(integrations, "is_tensorboard_available", lambda: False)
    with pytest.raises(TunekitError, match=r"pip install 'tunekit\[tensorboard\]'"):
        _fit(tiny_llama, tmp_path / "b", report_to="tensorboard")
    assert not any((tmp_path / "b").glob("checkpoint-*"))


# -- optimizers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adafactor", "sgd"])
def test_other_optimizers_train_and_are_the_ones_used(tiny_llama, tmp_path, optimizer, monkeypatch):
    import torch
    from transformers import Trainer

    used = {}
    create = Trainer.create_optimizer

    def spy(self, *a, **k):
        opt = create(self, *a, **k)
        used["type"] = type(getattr(opt, "optimizer", opt)).__name__
        return opt

    monkeypatch.setattr(Trainer, "create_optimizer", spy)
    rows = sft_rows(48)
    tuner = Tuner(model=str(tiny_llama), output_dir=str(tmp_path / "run"),
                  training=quick(optimizer=optimizer, learning_rate={"adafactor": 1e-2, "sgd": 1.0}[optimizer], max_steps=8))
    before = tuner.evaluate(rows).loss
    result = tuner.fit(rows)
    assert used["type"] == {"adafactor": "Adafactor", "sgd": "SGD"}[optimizer]
    assert torch.isfinite(torch.tensor(result.train_loss))
    assert tuner.evaluate(rows).loss < before


def test_bitsandbytes_optimizers_are_refused_on_a_cpu(tiny_llama, tmp_path):
    with pytest.raises(ConfigError, match="training.optimizer.*needs a CUDA GPU.*adafactor"):
        _fit(tiny_llama, tmp_path / "run", optimizer="adamw_8bit")


def test_unknown_optimizer_is_a_config_error():
    with pytest.raises(ConfigError, match="training.optimizer"):
        Tuner(model="gpt2", training={"optimizer": "adam"})


# -- early stopping -------------------------------------------------------------------------------
def test_early_stopping_config_needs_eval_steps_and_aligned_saves():
    with pytest.raises(ConfigError, match="early_stopping needs training.eval_steps"):
        Tuner(model="gpt2", training={"early_stopping": {"patience": 2}})
    with pytest.raises(ConfigError, match="multiple of training.eval_steps"):
        Tuner(model="gpt2", training={"early_stopping": {}, "eval_steps": 4, "save_steps": 6})


def test_early_stopping_needs_eval_rows(tiny_llama, tmp_path):
    with pytest.raises(ConfigError, match="training.early_stopping: needs eval data"):
        _fit(tiny_llama, tmp_path / "run", eval_steps=2, early_stopping={"patience": 1})


def test_early_stopping_stops_and_restores_the_best_checkpoint(tiny_llama, tmp_path):
    # Full fine-tuning of the tiny model on 16 rows at this learning rate overfits within a few steps:
    # the loss on 16 other rows falls, then rises.
    tuner = Tuner(model=str(tiny_llama), strategy="full", output_dir=str(tmp_path / "run"), training=quick(
        max_steps=30, eval_steps=2, learning_rate=0.01, keep_checkpoints=1, early_stopping={"patience": 2}))
    result = tuner.fit(sft_rows(16, seed=1), sft_rows(16, seed=2))
    losses = {p.step: p.loss for p in result.eval_history}
    best = min(losses, key=losses.__getitem__)
    assert result.steps < 30, "the eval loss never stopped improving: the test needs a higher learning rate"
    assert best != max(losses), "the best evaluation was the last one: nothing had to be restored"
    assert result.best_step == best
    # patience 2: training stopped at the second evaluation after the best one
    assert result.steps == best + 2 * 2
    # the model fit returns (and saved) is the best checkpoint's: its eval loss is the best one
    assert result.eval_loss == pytest.approx(losses[best], rel=1e-5)
    assert (tmp_path / "run" / f"checkpoint-{best}").is_dir()  # kept by the rotation (keep_checkpoints=1)
    state = json.loads((tmp_path / "run" / f"checkpoint-{result.steps}" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(tmp_path / "run" / f"checkpoint-{best}")


# -- NEFTune ----------------------------------------------------------------------------------------
def test_neftune_noises_training_only(tiny_llama, tmp_path):
    import torch

    plain_tuner, plain = _fit(tiny_llama, tmp_path / "plain", max_steps=3)
    noisy_tuner, noisy = _fit(tiny_llama, tmp_path / "noisy", max_steps=3, neftune_alpha=50.0)
    assert plain.loss_history[0].loss != pytest.approx(noisy.loss_history[0].loss, rel=1e-4)
    embed = noisy_tuner.model.get_input_embeddings()
    assert not embed._forward_hooks  # the Trainer removed the noise hook when training ended
    ids = noisy_tuner.tokenizer("a b c", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(noisy_tuner.model(ids).logits, noisy_tuner.model(ids).logits)


# -- new tokens -----------------------------------------------------------------------------------
def _tool_rows(n: int = 48) -> list[dict[str, str]]:
    return [{"prompt": row["prompt"], "completion": "<|tool|> " + row["completion"]} for row in sft_rows(n)]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # untied and tied output heads
def test_added_tokens_train_just_their_rows_under_lora_and_reload(arch, tiny_llama, tiny_gpt2, tmp_path):
    import torch

    model_path = tiny_llama if arch == "llama" else tiny_gpt2
    tuner, _ = _fit(model_path, tmp_path / "run", _tool_rows(), data={"add_tokens": ["<|tool|>"]}, learning_rate=1e-2)
    tok = tuner.tokenizer
    tool = tok.convert_tokens_to_ids("<|tool|>")
    assert tok("x <|tool|> y")["input_ids"].count(tool) == 1  # one token, never split
    adapter_layer = tuner.model.get_input_embeddings().token_adapter
    base_weight = adapter_layer.base_layer.weight
    assert base_weight.shape[0] == len(tok)  # resized for it
    trained = adapter_layer.trainable_tokens_delta["default"]
    assert trained.shape[0] == 1  # just the new row trains
    assert not torch.allclose(trained[0], base_weight[tool])  # and it moved from its initial value
    adapter = tmp_path / "run" / "model" / "adapter_model.safetensors"
    from safetensors import safe_open

    with safe_open(str(adapter), "pt") as f:
        keys = list(f.keys())
    assert any("trainable_tokens" in k for k in keys)
    assert not any(k.endswith("embed_tokens.weight") or k.endswith("wte.weight") for k in keys), "the whole embedding was saved"
    reloaded = Tuner.load(tmp_path / "run")
    ids = tok("go <|tool|> 12", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(tuner.model(ids).logits, reloaded.model(ids).logits, atol=1e-5)


def test_added_tokens_with_full_fine_tuning_save_and_reload(tiny_llama, tmp_path):
    import torch

    tuner, _ = _fit(tiny_llama, tmp_path / "run", _tool_rows(), strategy="full", data={"add_tokens": ["<|tool|>"]})
    reloaded = Tuner.load(tmp_path / "run")
    ids = tuner.tokenizer("go <|tool|> 12", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(tuner.model(ids).logits, reloaded.model(ids).logits, atol=1e-5)


@pytest.mark.parametrize(("strategy", "warned"), [("head", True), ("full", False), ("lora", False)])
def test_a_strategy_that_leaves_new_tokens_untrained_says_so(strategy, warned, tiny_llama, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="tunekit.models.setup"):
        _fit(tiny_llama, tmp_path / "run", _tool_rows(8), strategy=strategy, data={"add_tokens": ["<|tool|>"]}, max_steps=1)
    said = [r.getMessage() for r in caplog.records if "data.add_tokens" in r.getMessage()]
    assert bool(said) == warned, said
    if warned:
        assert "'head'" in said[0] and "1 new tokens" in said[0]
