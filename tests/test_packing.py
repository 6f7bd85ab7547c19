"""``training.packing``: padding-free batches whose rows never see each other."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.conftest import quick

from tunekit import Tuner
from tunekit.data.collate import PackedRows, PadPerBatch
from tunekit.errors import ConfigError
from tunekit.testing import WORDS, build_tiny_model, pair_rows, sft_rows
from tunekit.training.loss import trained_logits_loss
from tunekit.training.packing import isolates_packed_rows


def _features(tuner: Tuner, n: int = 4) -> list[dict[str, Any]]:
    from datasets import Dataset

    from tunekit.builtin.objectives import SFTObjective, SFTOptions

    tokenized = SFTObjective(SFTOptions()).tokenize(Dataset.from_list(sft_rows(n)), tuner.tokenizer, max_length=64)
    return [tokenized[i] for i in range(n)]


def _varied_rows(n: int) -> list[dict[str, str]]:
    """Rows of 1 to 6 words, so padded batches hold padding and packed ones do not."""
    rows = []
    for i in range(n):
        words = [WORDS[(i * 7 + k) % len(WORDS)] for k in range(1 + i % 6)]
        rows.append({"prompt": "Reverse: " + " ".join(words) + "\nAnswer:", "completion": " " + " ".join(reversed(words))})
    return rows


def test_rows_side_by_side_with_positions_restarting_and_no_padding() -> None:
    batch = PackedRows()([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9]]  # a row's first token is never predicted from the row before
    assert "attention_mask" not in batch and batch["use_cache"] is False  # transformers finds packed rows only without a cache


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "gemma", "phi"])
def test_a_packed_rows_logits_equal_its_own(tmp_path: Path, arch: str) -> None:
    tuner = Tuner(model=str(build_tiny_model(tmp_path / arch, arch)), strategy="lora")
    model = tuner.model.eval()
    features = _features(tuner)
    packed = PackedRows()(features)
    with torch.no_grad():
        together = model(**{k: v for k, v in packed.items() if k != "labels"}).logits[0]  # as the Trainer passes it
        start = 0
        for f in features:
            alone = model(input_ids=torch.tensor([f["input_ids"]]), use_cache=False).logits[0]
            torch.testing.assert_close(together[start : start + len(alone)], alone, rtol=1e-4, atol=1e-5)
            start += len(alone)
    assert start == together.shape[0]
    assert isolates_packed_rows(model) is True


def test_the_same_loss_and_gradients_as_padded_batches(tiny_llama: Path) -> None:
    tuner = Tuner(model=str(tiny_llama), strategy="lora")
    model = tuner.model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    features = _features(tuner)
    grads = []
    losses = []
    for batch in (PadPerBatch(int(tuner.tokenizer.pad_token_id))(features), PackedRows()(features)):
        loss = trained_logits_loss(model, batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad(set_to_none=True)
    torch.testing.assert_close(losses[1], losses[0])
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_fit_with_packing_trains_as_the_padded_run(tiny_model: Path, tmp_path: Path) -> None:
    losses, tokens = {}, {}
    for packing in (True, False):
        tuner = Tuner(model=str(tiny_model), strategy="lora", output_dir=str(tmp_path / f"run-{packing}"),
                      training=quick(packing=packing, seed=5))
        for module in tuner.model.modules():  # GPT-2's dropout draws other masks for other batch shapes
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        result = tuner.fit(_varied_rows(48))
        losses[packing] = [p.loss for p in result.loss_history]
        tokens[packing] = result.tokens_seen
    assert len(losses[True]) == 6
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    assert tokens[True] == tokens[False] > 0  # every real token counted, EOS included (GPT-2-style pad = EOS or not)


def test_a_model_that_lets_rows_see_each_other_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    tuner = Tuner(model=str(tiny_llama), strategy="lora", output_dir=str(tmp_path / "run"), training=quick(packing=True))
    inner = tuner.model.get_base_model()
    real_forward = inner.forward

    @functools.wraps(real_forward)
    def unaware(*args: Any, **kwargs: Any) -> Any:  # ignores the positions: one causal sequence
        kwargs.pop("position_ids", None)
        return real_forward(*args, **kwargs)

    inner.forward = unaware
    with pytest.raises(ConfigError, match=r"training\.packing.*attend to each other"):
        tuner.fit(sft_rows(16))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_an_objective_with_its_own_batches_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    tuner = Tuner(model=str(tiny_llama), strategy="lora", objective="dpo", output_dir=str(tmp_path / "run"), training=quick(packing=True))
    with pytest.raises(ConfigError, match=r"training\.packing.*'dpo'"):
        tuner.fit(pair_rows(16))
