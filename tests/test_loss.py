"""The trained-positions loss: the same loss and gradients as the model's own, fewer logits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tests.conftest import quick

from tunekit import Tuner
from tunekit.testing import sft_rows
from tunekit.training.loss import (
    AUTO_MIN_HEAD_WEIGHTS,
    supports_trained_logits,
    trained_logits_loss,
    trained_positions,
    use_trained_logits,
)


def _batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    ids = torch.randint(3, 100, (3, 12))
    labels = ids.clone()
    labels[:, :5] = -100  # a prompt
    labels[1, :8] = -100  # a longer prompt
    labels[2, 9:] = -100  # padding
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("strategy", ["lora", "full", "head"])
def test_same_loss_and_gradients_as_the_models_own(tiny_model: Path, strategy: str) -> None:
    model = Tuner(model=str(tiny_model), strategy=strategy).model
    assert supports_trained_logits(model)
    model.eval()  # no dropout, so two forwards see the same network; gradients still flow
    batch = _batch()
    for items in (None, torch.tensor(17)):
        extra = {} if items is None else {"num_items_in_batch": items}
        own = model(**batch, **extra).loss
        own.backward()
        own_grads = _grads(model)
        ours = trained_logits_loss(model, batch, items)
        ours.backward()
        our_grads = _grads(model)
        torch.testing.assert_close(ours, own)
        every_position = trained_logits_loss(model, batch, items, skip_untrained=False)  # the same tokens scored
        torch.testing.assert_close(every_position, own)
        assert own_grads.keys() == our_grads.keys() and own_grads
        for name in own_grads:
            torch.testing.assert_close(our_grads[name], own_grads[name], msg=name)


def test_only_trained_positions_reach_the_head(tiny_llama: Path) -> None:
    model = Tuner(model=str(tiny_llama), strategy="lora").model
    rows_seen: list[int] = []
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda mod, args, out: rows_seen.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    try:
        batch = _batch()
        trained_logits_loss(model, batch)
        model(**batch)
    finally:
        hook.remove()
    trained = int((batch["labels"][:, 1:] != -100).sum())
    assert rows_seen == [trained, batch["input_ids"].numel()]
    assert int(trained_positions(batch["labels"]).sum()) == trained


def test_models_that_cannot_skip_positions_keep_their_own_loss(tiny_llama: Path) -> None:
    model = Tuner(model=str(tiny_llama), strategy="full").model

    class NoKeep(torch.nn.Module):  # a forward without logits_to_keep
        def __init__(self) -> None:
            super().__init__()
            self.inner = model
            self.config = model.config

        def forward(self, input_ids: Any = None, attention_mask: Any = None, labels: Any = None) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    assert not supports_trained_logits(NoKeep())
    model.config.output_router_logits = True  # mixture of experts: an auxiliary loss term
    assert not supports_trained_logits(model)


def _fit_losses(model_dir: Path, tmp_path: Path, name: str, **training: Any) -> list[float]:
    tuner = Tuner(model=str(model_dir), strategy="lora", output_dir=str(tmp_path / name), training=quick(**training))
    result = tuner.fit(sft_rows(48))
    return [p.loss for p in result.loss_history]


def test_fit_uses_it_and_trains_the_same(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tunekit.training.trainer as trainer_module

    calls = []
    real = trainer_module.trained_logits_loss
    monkeypatch.setattr(trainer_module, "trained_logits_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    # gradient accumulation checks the scaling by the items of the whole accumulated batch
    fast = _fit_losses(tiny_llama, tmp_path, "fast", gradient_accumulation=2, batch_size=4, trained_logits_only=True)
    assert len(calls) == 6 * 2
    calls.clear()
    own = _fit_losses(tiny_llama, tmp_path, "own", gradient_accumulation=2, batch_size=4, trained_logits_only=False)
    assert not calls
    assert len(fast) == len(own) == 6
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(own), rtol=1e-4, atol=1e-5)


def test_evaluation_loss_is_the_same_either_way(tiny_gpt2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tunekit.evaluation as evaluation

    tuner = Tuner(model=str(tiny_gpt2), strategy="lora")
    rows = sft_rows(12)
    monkeypatch.setattr(evaluation, "use_trained_logits", lambda model, setting: supports_trained_logits(model))
    fast = tuner.evaluate(rows)
    monkeypatch.setattr(evaluation, "use_trained_logits", lambda model, setting: False)
    own = tuner.evaluate(rows)
    assert fast.tokens == own.tokens > 0
    assert fast.loss == pytest.approx(own.loss, rel=1e-5)


def test_auto_uses_it_only_for_a_real_sized_head(tiny_llama: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    toy = Tuner(model=str(tiny_llama), strategy="lora").model
    assert toy.get_output_embeddings().weight.numel() < AUTO_MIN_HEAD_WEIGHTS
    assert supports_trained_logits(toy)
    assert not use_trained_logits(toy, "auto")  # selecting positions costs more than a toy head
    assert use_trained_logits(toy, True) and not use_trained_logits(toy, False)

    config = LlamaConfig(vocab_size=9000, hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config)  # a real-sized vocabulary on a toy body: head 9000 x 128
    head = model.get_output_embeddings()
    assert head.in_features * head.out_features >= AUTO_MIN_HEAD_WEIGHTS
    assert use_trained_logits(model, "auto")


class _Wrapped(torch.nn.Module):
    """A model whose forward is ``forward_fn``; its parameters and config are the tiny Llama's."""

    def __init__(self, model: torch.nn.Module, forward_fn: Any) -> None:
        super().__init__()
        self.inner = model
        self.config = model.config
        self._forward_fn = forward_fn

    def forward(self, input_ids: Any = None, **kwargs: Any) -> Any:
        return self._forward_fn(self.inner, input_ids, kwargs)


def test_a_forward_without_the_mask_warns_and_says_why(tiny_llama: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = Tuner(model=str(tiny_llama), strategy="full").model

    def no_keep(inner: Any, ids: Any, kwargs: dict[str, Any]) -> Any:
        if "logits_to_keep" in kwargs:  # what an old-style forward(**kwargs) passing them on would raise
            raise TypeError("forward() got an unexpected keyword argument 'logits_to_keep'")
        return inner(input_ids=ids, **kwargs)

    with caplog.at_level("WARNING", logger="tunekit.training.loss"):
        assert not supports_trained_logits(_Wrapped(model, no_keep))
    assert "does not take a boolean logits_to_keep" in caplog.text and "unexpected keyword argument" in caplog.text

    class Plain(torch.nn.Module):  # a signature without logits_to_keep: no probe needed, still a warning
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.config = model, model.config

        def forward(self, input_ids: Any = None) -> Any:
            return self.inner(input_ids=input_ids)

    caplog.clear()
    with caplog.at_level("WARNING", logger="tunekit.training.loss"):
        assert not supports_trained_logits(Plain())
    assert "Plain.forward does not take logits_to_keep" in caplog.text


def test_a_real_error_in_the_probe_is_not_taken_for_a_missing_feature(tiny_llama: Path) -> None:
    model = Tuner(model=str(tiny_llama), strategy="full").model

    def broken(inner: Any, ids: Any, kwargs: dict[str, Any]) -> Any:
        raise ValueError("a bug in the model's forward")

    with pytest.raises(ValueError, match="a bug in the model's forward"):
        supports_trained_logits(_Wrapped(model, broken))


def test_the_supported_path_logs_no_warning(tiny_llama: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = Tuner(model=str(tiny_llama), strategy="lora").model
    with caplog.at_level("WARNING", logger="tunekit.training.loss"):
        assert supports_trained_logits(model)
    assert not caplog.records
