"""A batch's shared prompt prefix run once: the same loss and gradients as the plain step, fewer positions."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.conftest import quick

from tunekit import Tuner
from tunekit.errors import ConfigError
from tunekit.testing import chat_rows, sft_rows
from tunekit.training import shared_prefix as sp
from tunekit.training.loss import trained_logits_loss, trained_positions

INSTRUCTION = "You are given three words. Write them in the reverse order, and nothing else.\n"


def _instructed_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Prompt/completion rows that all start with one long instruction (for a model without a chat template)."""
    return [{**row, "prompt": INSTRUCTION + row["prompt"]} for row in sft_rows(n, seed)]


def _chat_batch(tuner: Tuner, n: int = 4) -> dict[str, torch.Tensor]:
    """Rows sharing an instruction (chat rows with one system prompt where the tokenizer has a chat template)
    tokenized by the sft objective and padded per batch, as fit batches them."""
    from datasets import Dataset

    from tunekit.builtin.objectives import SFTObjective, SFTOptions
    from tunekit.data.collate import PadPerBatch

    rows = chat_rows(n) if tuner.tokenizer.chat_template else _instructed_rows(n)
    tokenized = SFTObjective(SFTOptions()).tokenize(Dataset.from_list(rows), tuner.tokenizer, max_length=128)
    return PadPerBatch(int(tuner.tokenizer.pad_token_id))([tokenized[i] for i in range(n)])


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


class _Spy:
    """Counts the shared-prefix forwards and the prefix lengths they ran."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.prefixes: list[int] = []
        real = sp.shared_prefix_logits

        def spy(model: Any, inputs: dict[str, Any], keep: torch.Tensor, prefix: int) -> torch.Tensor:
            self.prefixes.append(prefix)
            return real(model, inputs, keep, prefix)

        import tunekit.training.loss as loss_module

        monkeypatch.setattr(loss_module, "shared_prefix_logits", spy)


@pytest.mark.parametrize("strategy", ["lora", "full"])
def test_same_loss_and_gradients_as_the_plain_step(tiny_model: Path, tmp_path: Path, strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    tuner = Tuner(model=str(tiny_model), strategy=strategy)
    model = tuner.model
    with torch.no_grad():  # LoRA's B starts at 0: move it, so the adapter's gradients depend on the prefix too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    model.eval()  # no dropout: both forwards see the same network; gradients still flow
    batch = _chat_batch(tuner)
    keep = trained_positions(batch["labels"])
    prefix = sp.prefix_length(batch["input_ids"], batch["attention_mask"], keep)
    assert prefix >= 3 and sp.worth_sharing(*batch["input_ids"].shape, prefix)
    spy = _Spy(monkeypatch)
    for items in (None, torch.tensor(11)):
        plain = trained_logits_loss(model, batch, items)
        plain.backward()
        plain_grads = _grads(model)
        shared = trained_logits_loss(model, batch, items, shared_prefix=True)
        shared.backward()
        shared_grads = _grads(model)
        torch.testing.assert_close(shared, plain)
        assert plain_grads.keys() == shared_grads.keys() and plain_grads
        for name in plain_grads:
            torch.testing.assert_close(shared_grads[name], plain_grads[name], msg=name, rtol=1e-4, atol=1e-6)
    assert spy.prefixes == [prefix, prefix]  # the shared path really ran, once per shared call


def test_prefix_stops_at_the_first_difference_padding_or_needed_logit() -> None:
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 1, 2]])
    none = torch.zeros(2, 5, dtype=torch.bool)
    assert sp.prefix_length(ids, torch.ones_like(ids), none) == 3
    left_padded = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    assert sp.prefix_length(ids, left_padded, none) == 0
    needed = none.clone()
    needed[1, 1] = True  # position 1's logits predict a trained token of row 1
    assert sp.prefix_length(ids, torch.ones_like(ids), needed) == 1
    assert sp.prefix_length(torch.tensor([[4, 5], [6, 5]]), None, torch.zeros(2, 2, dtype=torch.bool)) == 0


def test_worth_sharing_needs_two_rows_and_a_tenth_of_the_positions() -> None:
    assert not sp.worth_sharing(1, 50, 20)  # one row: nothing to share
    assert not sp.worth_sharing(4, 50, 50)  # nothing left after the prefix
    assert not sp.worth_sharing(4, 100, 5)  # 15 of 400 positions saved: under 10%
    assert sp.worth_sharing(4, 100, 20)  # 60 of 400


def test_batches_that_share_little_or_carry_other_inputs_run_plain(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tuner = Tuner(model=str(tiny_llama), strategy="lora")
    model = tuner.model
    model.eval()
    batch = _chat_batch(tuner)
    spy = _Spy(monkeypatch)
    with torch.no_grad():
        one_row = {k: v[:1] for k, v in batch.items()}
        trained_logits_loss(model, one_row, shared_prefix=True)
        positions = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
        trained_logits_loss(model, {**batch, "position_ids": positions}, shared_prefix=True)
        trained_logits_loss(model, batch, shared_prefix=True, skip_untrained=False)  # the model's own head on every position
    assert spy.prefixes == []


def test_auto_stays_off_where_it_cannot_apply_and_true_says_why(tiny_llama: Path) -> None:
    model = Tuner(model=str(tiny_llama), strategy="lora").model
    assert sp.use_shared_prefix(model, "auto", trained_logits=True)
    assert not sp.use_shared_prefix(model, False, trained_logits=True)
    assert not sp.use_shared_prefix(model, "auto", trained_logits=True, gradient_checkpointing=True)
    assert not sp.use_shared_prefix(model, "auto", trained_logits=False)
    with pytest.raises(ConfigError, match=r"training\.shared_prefix.*gradient checkpointing"):
        sp.use_shared_prefix(model, True, trained_logits=True, gradient_checkpointing=True)


def test_a_model_that_ignores_the_cache_fails_the_probe(tiny_llama: Path) -> None:
    model = Tuner(model=str(tiny_llama), strategy="full").model
    real_forward = model.forward

    @functools.wraps(real_forward)  # the same signature: only the probe can tell
    def forgetful(*args: Any, **kwargs: Any) -> Any:  # drops the cache: the rows would not see their prefix
        kwargs.pop("cache", None)
        kwargs.pop("past_key_values", None)
        kwargs.pop("position_ids", None)
        return real_forward(*args, **kwargs)

    model.forward = forgetful  # type: ignore[method-assign]
    assert not sp.use_shared_prefix(model, "auto", trained_logits=True)
    with pytest.raises(ConfigError, match="different logits"):
        sp.use_shared_prefix(model, True, trained_logits=True)


def test_sliding_window_caches_are_not_shared(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, MistralConfig

    config = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           num_key_value_heads=2, sliding_window=4)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(ConfigError, match="sliding-window"):
        sp.use_shared_prefix(model, True, trained_logits=True)


def test_fit_shares_the_prefix_and_trains_as_the_plain_run(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two fits on chat rows, shared prefix on and off: the same losses step by step, and the same eval loss."""
    spy = _Spy(monkeypatch)
    results = {}
    for setting in (True, False):
        tuner = Tuner(model=str(tiny_llama), strategy="lora", output_dir=str(tmp_path / f"run-{setting}"),
                      training=quick(shared_prefix=setting, trained_logits_only=True, seed=3))
        results[setting] = tuner.fit(chat_rows(48), eval=chat_rows(8, seed=1))
        if setting:
            assert len(spy.prefixes) >= 6  # every training step shared its prefix (and the evaluations too)
            shared_calls = len(spy.prefixes)
    assert len(spy.prefixes) == shared_calls  # the plain run never did
    shared, plain = results[True], results[False]
    shared_losses = [p.loss for p in shared.loss_history]
    plain_losses = [p.loss for p in plain.loss_history]
    assert len(shared_losses) == len(plain_losses) == 6
    assert shared_losses == pytest.approx(plain_losses, rel=1e-4)
    assert shared.eval_loss == pytest.approx(plain.eval_loss, rel=1e-4)


def test_probe_tolerance_scales_with_the_logits():
    """Rounding between two ways of running a model grows with the logits' scale: SmolLM2's logits reach
    33 and its probe's two paths differ by 0.0039 on an AMD EPYC, which a fixed 1e-3 tolerance read as a fault."""
    import torch

    from tunekit.training.numerics import same_logits

    want = torch.tensor([[33.0, 0.0, -4.0], [12.0, 1.0, 0.5]])
    assert same_logits(want + 0.004, want)  # rounding at that scale
    assert not same_logits(want + torch.tensor([[0.0, 0.2, 0.0], [0.0, 0.0, 0.0]]), want)  # a real difference
    assert not same_logits(want[:1], want)  # another shape
    small = torch.tensor([0.01, -0.02])
    assert same_logits(small + 5e-4, small) and not same_logits(small + 0.01, small)  # floor of 1 on the scale
    bf16 = want.to(torch.bfloat16)
    assert same_logits((want + 0.25).to(torch.bfloat16), bf16)  # two bf16 rounding steps at 33
    assert not same_logits((want + torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, 0.0]])).to(torch.bfloat16), bf16)


def test_probe_rounding_script_reports_both_batches(tiny_llama: Path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "scripts" / "probe_rounding.py"), "--model", str(tiny_llama), "--threads", "1"],
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if "thread(s)" in line]
    assert len(lines) == 2 and all("same_logits: True" in line for line in lines), proc.stdout  # a correct model's two paths agree
    assert "the probe's batch, shared prefix 3 tokens" in proc.stdout and "iso-dates rows" in proc.stdout
