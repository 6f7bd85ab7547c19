"""Pre-flight audit and verified merges."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import quick

from tunekit import Tuner
from tunekit.preflight import MARK_CLOSE, MARK_OPEN, PreflightError
from tunekit.testing import chat_rows, sft_rows, text_rows


def test_report_on_chat_sft(tiny_llama):
    tuner = Tuner(model=str(tiny_llama), strategy="lora", training={"batch_size": 4})
    report = tuner.preflight(chat_rows(12), estimate=False)
    stats = report.token_stats
    assert report.objective == "sft" and report.row_format == "chat"
    assert stats.rows == 12 and stats.rows_without_trained_tokens == 0 and stats.rows_over_max_length == 0
    assert stats.trained_tokens < stats.tokens
    assert stats.trained_per_row_min <= stats.trained_per_row_median <= stats.trained_per_row_max
    sample = report.label_samples[0]
    assert sample.count(MARK_OPEN) == 1 and MARK_CLOSE in sample
    trained = sample.split(MARK_OPEN)[1].split(MARK_CLOSE)[0]
    assert "<|im_end|>" in trained and "You reverse words" not in trained
    assert not report.errors
    groups = {g.name: g for g in report.params_by_block}
    # LoRA rank 8 on the tiny Llama's linears, by hand: 8 * (in + out) for q 64->64, k and v 64->32 (2 kv heads
    # of 16), o 64->64, gate/up 64->128, down 128->64
    per_block = 8 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 3 * (64 + 128))
    assert (groups["embeddings"].trainable, groups["block 0"].trainable, groups["block 1"].trainable, groups["head"].trainable) == (
        0, per_block, per_block, 0
    ) and per_block == 8192
    # frozen base counted by hand too: embeddings and head 400x64 each, a block's 4 attention + 3 MLP weights and 2 norms
    block = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128 + 2 * 64
    assert (groups["embeddings"].total, groups["head"].total, groups["block 0"].total) == (400 * 64, 400 * 64, block + per_block)
    assert sum(g.trainable for g in report.params_by_block) == tuner.model.get_nb_trainable_parameters()[0] == 2 * per_block
    assert "what the model learns from" in report.summary()


def test_truncation_and_rows_without_answer_are_reported(tiny_gpt2):
    rows = [{"prompt": "red " * 40, "completion": " blue"}, *sft_rows(3)]
    report = Tuner(model=str(tiny_gpt2), training={"max_length": 20}).preflight(rows, estimate=False)
    assert report.token_stats.rows_over_max_length == 1
    assert report.token_stats.rows_without_trained_tokens == 1
    codes = {f.code: f.severity for f in report.findings}
    assert codes["rows-without-trained-tokens"] == "warning" and codes["rows-over-max-length"] == "warning"
    assert codes["pad-equals-eos"] == "info"


def test_eos_never_trained_is_an_error_that_stops_fit(tiny_gpt2, tmp_path):
    tuner = Tuner(model=str(tiny_gpt2), objective={"name": "sft", "append_eos": False}, output_dir=str(tmp_path / "r"), training=quick(max_steps=1))
    report = tuner.preflight(sft_rows(4), estimate=False)
    assert [f.code for f in report.errors] == ["eos-not-trained"]
    with pytest.raises(PreflightError, match="(?s)eos-not-trained.*ignore_preflight_errors=True"):
        tuner.fit(sft_rows(4))
    assert tuner.fit(sft_rows(4), ignore_preflight_errors=True).steps == 1


def test_tied_weights_touched_by_a_strategy_are_flagged(tiny_gpt2):
    report = Tuner(model=str(tiny_gpt2), strategy="full").preflight(sft_rows(4), estimate=False)
    tied = [f for f in report.findings if f.code == "tied-weights-trained"]
    assert tied and tied[0].severity == "info"  # full fine-tuning trains tied weights by design
    head = Tuner(model=str(tiny_gpt2), strategy="head").preflight(sft_rows(4), estimate=False)
    assert not [f for f in head.findings if f.code == "tied-weights-trained"]  # head unties first
    groups = {g.name: g for g in head.params_by_block}
    assert groups["head"].trainable == groups["head"].total and groups["embeddings"].trainable == 0


def test_causal_lm_stats_count_rows_before_packing(tiny_gpt2):
    report = Tuner(model=str(tiny_gpt2), training={"max_length": 8}).preflight(text_rows(10), estimate=False)
    assert report.objective == "causal-lm" and report.token_stats.rows == 10
    assert report.token_stats.trained_tokens == report.token_stats.tokens


def test_preflight_changes_no_weight(tiny_llama):
    tuner = Tuner(model=str(tiny_llama), strategy="full")
    before = {n: p.detach().clone() for n, p in tuner.model.named_parameters()}
    tuner.preflight(sft_rows(8))
    assert all(torch.equal(p, before[n]) for n, p in tuner.model.named_parameters())
    assert all(p.grad is None for p in tuner.model.parameters())


def test_memory_estimate_against_the_measured_fit(tiny_llama, tmp_path):
    """The estimate and the measured peak are both process RSS peaks on a CPU.

    On the tiny model both are dominated by the process itself (torch, transformers), so the
    error is small here: within 25%. Time per step is printed, not asserted (timings are noisy).
    """
    rows = sft_rows(32)
    tuner = Tuner(model=str(tiny_llama), strategy="full", output_dir=str(tmp_path / "r"), training=quick(max_steps=6, batch_size=8))
    estimate = tuner.preflight(rows).estimate
    result = tuner.fit(rows)
    measured_step = result.wall_time_s / result.steps
    print(f"memory estimate/measured = {estimate.peak_memory_bytes / result.peak_memory_bytes:.2f}, "
          f"time estimate/measured = {estimate.seconds_per_step / measured_step:.2f}")
    assert estimate.peak_memory_kind == result.peak_memory_kind
    assert 0.75 <= estimate.peak_memory_bytes / result.peak_memory_bytes <= 1.25
    assert estimate.total_steps == result.steps == 6
    assert estimate.total_seconds == pytest.approx(6 * estimate.seconds_per_step)


def test_the_whole_fit_time_counts_the_steps_the_trainer_takes(tiny_gpt2, tmp_path):
    """Without max_steps: epochs x batches per epoch (a partial batch is a step), after the eval split."""
    training = quick(epochs=2, batch_size=3, gradient_accumulation=2)
    training.pop("max_steps", None)
    tuner = Tuner(model=str(tiny_gpt2), output_dir=str(tmp_path / "r"), training=training, data={"eval_fraction": 0.2})
    report = tuner.preflight(sft_rows(20))
    result = tuner.fit(sft_rows(20))
    assert report.estimate.total_steps == result.steps == 6  # 16 train rows, 6 per step: 3 steps an epoch
    assert "the whole fit, 6 steps x" in report.summary()


def test_merge_is_verified_and_a_bad_merge_is_refused_with_the_adapter_intact(tiny_llama, tmp_path, monkeypatch):
    from tunekit import merging

    tuner = Tuner(model=str(tiny_llama), strategy="lora", output_dir=str(tmp_path / "r"), training=quick(max_steps=3, learning_rate=5e-2))
    tuner.fit(sft_rows(16))
    lora_model = tuner.model.base_model
    original = type(lora_model).merge_adapter

    def corrupting_merge(self, *args, **kwargs):
        original(self, *args, **kwargs)
        with torch.no_grad():
            next(p for n, p in self.named_parameters() if n.endswith("q_proj.base_layer.weight")).add_(0.5)

    monkeypatch.setattr(type(lora_model), "merge_adapter", corrupting_merge)
    with pytest.raises(merging.MergeVerificationError, match="differ from the adapter model's"):
        tuner.merge()
    monkeypatch.undo()
    # rejected merges leave an adapter model (weights are whatever unmerge restored; the adapter is still there)
    assert hasattr(tuner.model, "peft_config") and not tuner._merged


def test_good_merge_passes_verification(tiny_gpt2, tmp_path):
    tuner = Tuner(model=str(tiny_gpt2), strategy="lora", output_dir=str(tmp_path / "r"), training=quick(max_steps=3, learning_rate=5e-2))
    tuner.fit(sft_rows(16))
    merged = tuner.merge()
    assert not hasattr(merged, "peft_config")


def test_cli_preflight(tiny_gpt2, tmp_path):
    import json
    import subprocess
    import sys

    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in sft_rows(6)))
    (tmp_path / "run.yaml").write_text(f"model: {tiny_gpt2}\ndata:\n  train: train.jsonl\n")
    proc = subprocess.run([sys.executable, "-m", "tunekit.cli", "preflight", str(tmp_path / "run.yaml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "trained tokens per row" in proc.stdout and "estimate: peak memory" in proc.stdout
