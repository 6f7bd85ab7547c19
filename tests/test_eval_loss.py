"""One eval loss: the Trainer's evaluations during fit, fit's final evaluation and Tuner.evaluate are
the same token-weighted mean over trained tokens; and what users get back is in eval mode."""

from __future__ import annotations

import pytest
import torch

from tunekit import Tuner
from tunekit.testing import sft_rows

IGNORE = -100


def _uneven_rows() -> list[dict[str, str]]:
    """Eval rows whose answers differ a lot in length, so per-batch means differ from token weighting."""
    rows = sft_rows(5, seed=3)
    long = " ".join(["red green blue yellow black"] * 6)
    rows[0]["completion"] = " " + long
    rows[3]["completion"] = " " + long + " " + long
    return rows


def _by_hand(model, tokenized) -> tuple[float, float]:
    """(token-weighted cross-entropy, the stock Trainer's mean of per-batch means for batch 2)."""
    total, tokens, per_row = 0.0, 0, []
    with torch.no_grad():
        for row in tokenized:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor(row["labels"])
            logits = model(input_ids=ids).logits[0, :-1].float()
            targets = labels[1:]
            keep = targets != IGNORE
            loss = torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum")
            total, tokens = total + float(loss), tokens + int(keep.sum())
            per_row.append((float(loss), int(keep.sum())))
    batches = [per_row[i : i + 2] for i in range(0, len(per_row), 2)]
    # transformers' evaluation_loop: each batch's mean, repeated per row, averaged over rows
    stock = sum(len(b) * sum(s for s, _ in b) / sum(n for _, n in b) for b in batches) / len(per_row)
    return total / tokens, stock


@pytest.mark.parametrize("trained_logits_only", [False, True])
def test_trainer_eval_loss_equals_evaluate_and_the_hand_computed_token_mean(tiny_gpt2, tmp_path, trained_logits_only):
    eval_rows = _uneven_rows()
    tuner = Tuner(
        model=str(tiny_gpt2), strategy={"name": "lora", "rank": 4}, output_dir=str(tmp_path / "run"),
        training={"max_steps": 2, "eval_steps": 2, "batch_size": 2, "learning_rate": 1e-2, "logging_steps": 1,
                  "progress_bar": False, "trained_logits_only": trained_logits_only, "group_by_length": False},
    )
    result = tuner.fit(sft_rows(8), eval=eval_rows)
    at_step = [p.loss for p in result.eval_history if p.step == 2]
    assert at_step, result.eval_history
    evaluated = tuner.evaluate(eval_rows)
    tokenized = tuner._prepare(eval_rows).train
    hand, stock = _by_hand(tuner.model, tokenized)
    assert at_step[0] == pytest.approx(evaluated.loss, rel=1e-5)
    assert result.eval_loss == pytest.approx(evaluated.loss, rel=1e-5)
    assert evaluated.loss == pytest.approx(hand, rel=1e-5)
    # the rows are uneven enough that the stock per-batch mean is another number
    assert abs(stock - hand) > 1e-3


def _dropout_modules(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]


def test_models_handed_to_users_are_in_eval_mode_and_training_still_trains(tiny_gpt2, tmp_path, monkeypatch):
    from tunekit.training.trainer import TunekitTrainer

    modes: list[bool] = []
    original = TunekitTrainer.compute_loss

    def spy(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if torch.is_grad_enabled():  # a training step (evaluation runs under no_grad)
            modes.append(model.training)
        return original(self, model, inputs, return_outputs, num_items_in_batch)

    monkeypatch.setattr(TunekitTrainer, "compute_loss", spy)
    options = {"strategy": {"name": "lora", "rank": 4, "dropout": 0.1}}
    fresh = Tuner(model=str(tiny_gpt2), **options)
    assert not fresh.model.training and _dropout_modules(fresh.model)
    assert not any(m.training for m in fresh.model.modules())

    tuner = Tuner(model=str(tiny_gpt2), output_dir=str(tmp_path / "run"), **options,
                  training={"max_steps": 2, "batch_size": 4, "progress_bar": False})
    tuner.fit(sft_rows(8))
    assert modes and all(modes)  # the training steps ran in train mode (dropout on)
    assert not any(m.training for m in tuner.model.modules())

    loaded = Tuner.load(tmp_path / "run")
    assert not any(m.training for m in loaded.model.modules())
    # two generations agree: dropout is off
    assert loaded.generate("Reverse: cat dog bird\nAnswer:", max_new_tokens=4) == loaded.generate(
        "Reverse: cat dog bird\nAnswer:", max_new_tokens=4
    )
