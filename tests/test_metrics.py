"""Metric parts against hand-computed cases; the metric registry; evaluate(metrics=...) on a tiny model."""

from __future__ import annotations

import math

import pytest

from tunekit import ConfigError, UnknownPartError, hookimpl
from tunekit.evaluation import MetricInputs, build_metrics
from tunekit.parts import NoOptions
from tunekit.plugins import get_registry, register_plugin


def score(name: str, predictions: list[str], references: list[str], **options) -> float:
    (chosen,) = build_metrics([{"name": name, **options}])
    return chosen.metric.compute(MetricInputs(float("nan"), 0, len(references), predictions, references))


def test_builtin_metrics_are_registered():
    assert {"loss", "perplexity", "exact_match", "accuracy", "f1"} <= set(get_registry("metric").names())


def test_loss_and_perplexity():
    inputs = MetricInputs(loss=math.log(4.0), tokens=10, rows=2)
    values = {c.name: c.metric.compute(inputs) for c in build_metrics(None)}
    assert values["loss"] == pytest.approx(math.log(4.0))
    assert values["perplexity"] == pytest.approx(4.0)
    nan = {c.name: c.metric.compute(MetricInputs(float("nan"), 0, 0)) for c in build_metrics(["loss", "perplexity"])}
    assert all(math.isnan(v) for v in nan.values())


def test_exact_match_normalisation():
    preds = [" 2021-03-05\n", "Paris", "paris ", "", "x"]
    refs = ["2021-03-05", "paris", "Paris", "y", "x"]
    # strip (default): rows 0 and 4 match; "Paris" != "paris"
    assert score("exact_match", preds, refs) == pytest.approx(2 / 5)
    assert score("exact_match", preds, refs, case_fold=True) == pytest.approx(4 / 5)
    assert score("exact_match", preds, refs, strip=False) == pytest.approx(1 / 5)


def test_empty_predictions_are_wrong_and_no_rows_is_nan():
    assert score("exact_match", ["", ""], ["a", "b"]) == 0.0
    assert score("exact_match", [""], [""]) == 1.0  # an empty answer to an empty reference is right
    assert score("accuracy", ["", ""], ["a", "b"]) == 0.0
    assert score("f1", ["", ""], ["a", "b"]) == 0.0
    for name in ("exact_match", "accuracy", "f1"):
        assert math.isnan(score(name, [], []))


def test_accuracy_reads_answers_as_labels():
    refs = ["positive", "negative", "positive", "neutral"]
    preds = ["Positive, because it is good", "negatively", "positive", "neutral."]
    # case-folded: "positive, because..." reads as positive; "negatively" is no label
    # (a label must be followed by a non-alphanumeric character); "neutral." reads as neutral.
    assert score("accuracy", preds, refs, case_fold=True) == pytest.approx(3 / 4)
    assert score("accuracy", preds, refs) == pytest.approx(2 / 4)  # "Positive..." is no label without case-folding
    # The longest label an answer starts with wins.
    assert score("accuracy", ["very good!"], ["very good"], labels=["very", "very good"]) == 1.0


def test_macro_f1_hand_computed():
    refs = ["a", "a", "b", "c"]
    preds = ["a", "b", "b", "b"]
    # a: tp1 fp0 fn1 -> 2/3; b: tp1 fp2 fn0 -> 1/2; c: tp0 -> 0. Macro = (2/3 + 1/2 + 0) / 3
    assert score("f1", preds, refs) == pytest.approx((2 / 3 + 1 / 2) / 3)
    assert score("accuracy", preds, refs) == pytest.approx(2 / 4)


def test_macro_f1_with_a_class_missing():
    # Class "c" is never a reference, but is predicted (via the labels option): F1 0, and it counts.
    refs = ["a", "a", "b", "b"]
    preds = ["a", "c", "b", "b"]
    # a: tp1 fp0 fn1 -> 2/3; b: tp2 -> 1; c: tp0 fp1 -> 0
    assert score("f1", preds, refs, labels=["a", "b", "c"]) == pytest.approx((2 / 3 + 1 + 0) / 3)
    # Without the labels option, "c" is no label: a miss for "a", a false positive for nobody.
    assert score("f1", preds, refs) == pytest.approx((2 / 3 + 1) / 2)
    # A reference class that is never predicted has F1 0.
    assert score("f1", ["a", "a", "a"], ["a", "a", "b"]) == pytest.approx((2 * 2 / (2 * 2 + 1) + 0) / 2)
    assert score("f1", ["a", "b"], ["a", "b"]) == 1.0


def test_bad_metric_requests_are_reported_together():
    with pytest.raises(UnknownPartError, match="exact_macth") as err:
        build_metrics(["exact_macth", {"name": "f1", "strip": "maybe"}])
    assert "Did you mean 'exact_match'" in str(err.value)
    assert "metrics.1.strip" in str(err.value)
    with pytest.raises(ConfigError, match="twice"):
        build_metrics(["loss", "loss"])


def test_a_plugin_metric_is_asked_for_by_name():
    class LengthMetric:
        name = "answer_length"
        description = "Mean answer length in characters."
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
            register(LengthMetric)

    register_plugin(Plugin(), name="length-plugin")
    assert get_registry("metric").get("answer_length").plugin == "length-plugin"
    assert score("answer_length", ["ab", "abcd"], ["x", "y"]) == 3.0


def test_evaluate_with_metrics_before_and_after_fit(tiny_llama, tmp_path, monkeypatch):
    from tests.conftest import quick

    from tunekit import Tuner
    from tunekit.testing import chat_rows, sft_rows, text_rows

    tuner = Tuner(model=str(tiny_llama), strategy="lora", output_dir=str(tmp_path / "run"), training=quick(max_steps=2))
    held_out = chat_rows(6, seed=1)
    default = tuner.evaluate(held_out)
    assert set(default.metrics) == {"loss", "perplexity"} and default.generations == []
    before = tuner.evaluate(held_out, metrics=["exact_match", "loss", {"name": "accuracy", "case_fold": True}])
    assert list(before.metrics) == ["exact_match", "loss", "accuracy"]
    assert before["loss"] == pytest.approx(default.loss)
    assert len(before.generations) == 6
    assert before.generations[0].reference == held_out[0]["messages"][-1]["content"]
    assert before.generations[0].prompt == held_out[0]["messages"][:-1]
    result = tuner.fit(chat_rows(16), eval=held_out, metrics=["exact_match"])
    assert set(result.eval_metrics) == {"exact_match"} and len(result.eval_generations) == 6
    # Fixed answers instead of the model's: rows 0, 2 and 4 right (up to surrounding whitespace), the rest wrong.
    from tunekit import evaluation

    answers = [f" {r['messages'][-1]['content']}\n" if i % 2 == 0 else "wrong" for i, r in enumerate(held_out)]
    monkeypatch.setattr(evaluation, "generate_answers", lambda model, tok, prompts, **kw: answers[: len(prompts)])
    after = tuner.evaluate(held_out, metrics=["exact_match"])
    assert [g.prediction for g in after.generations] == answers
    assert after["exact_match"] == 3 / 6
    monkeypatch.undo()
    # prompt/completion rows: the reference is the completion
    pc = tuner.evaluate(sft_rows(3, seed=2), metrics=["exact_match"], max_new_tokens=2)
    assert [g.reference for g in pc.generations] == [r["completion"] for r in sft_rows(3, seed=2)]
    # raw text has no reference answer
    from tunekit import DataError

    with pytest.raises(DataError, match="prompt/completion or chat rows"):
        tuner.evaluate(text_rows(3), metrics=["exact_match"])


def test_batched_left_padded_generation_matches_one_by_one(tiny_llama):
    from tunekit import Tuner
    from tunekit.evaluation import generate_answers

    tuner = Tuner(model=str(tiny_llama), strategy="lora")
    prompts = ["Reverse: cat dog\nAnswer:", "Reverse: one two three four five six\nAnswer:", "Reverse: red\nAnswer:"]
    batched = generate_answers(tuner.model, tuner.tokenizer, prompts, batch_size=3, max_new_tokens=6)
    single = [tuner.generate(p, max_new_tokens=6) for p in prompts]
    assert batched == single
