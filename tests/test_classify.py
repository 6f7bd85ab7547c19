"""The ``classify`` objective: a classification head trained full / head-only / with LoRA, its labels,
losses, metrics from logits, predict, and saves that plain transformers and peft reload."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from tests.conftest import quick

from tunekit import ConfigError, DataError, Tuner
from tunekit.evaluation import MetricInputs, build_metrics
from tunekit.parts import ClassOutputs
from tunekit.plugins import get_registry

GROUPS = {
    "sport": ["goal", "match", "team", "score"],
    "food": ["bread", "soup", "apple", "cake"],
    "music": ["song", "drum", "piano", "band"],
}


def single_rows(classes: list[str], n: int = 16, seed: int = 0, int_labels: bool = False) -> list[dict]:
    """Rows whose text is made of one class's words: separable by a bag of words."""
    rng = random.Random(seed)
    rows = []
    for k, name in enumerate(classes):
        for _ in range(n):
            text = " ".join(rng.choice(GROUPS[name]) for _ in range(5))
            rows.append({"text": text, "label": k if int_labels else name})
    rng.shuffle(rows)
    return rows


def multi_rows(n: int = 48, seed: int = 0) -> list[dict]:
    """Rows holding the words of any non-empty subset of the classes; the label is that subset."""
    rng = random.Random(seed)
    names = list(GROUPS)
    rows = []
    for _ in range(n):
        chosen = [c for c in names if rng.random() < 0.5] or [rng.choice(names)]
        words = [rng.choice(GROUPS[c]) for c in chosen for _ in range(3)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": chosen})
    return rows


def outputs(name: str, classes: ClassOutputs):
    (chosen,) = build_metrics([name])
    inputs = MetricInputs(float("nan"), 0, len(classes.references), classes=classes)
    return chosen.metric.compute(inputs), getattr(chosen.metric, "report", lambda _: None)(inputs)


def one_hot_logits(predicted: list[int], k: int) -> list[list[float]]:
    return [[1.0 if j == p else 0.0 for j in range(k)] for p in predicted]


# -- metrics on fixed predictions ---------------------------------------------------------------------
def test_classification_metrics_are_registered():
    names = set(get_registry("metric").names())
    assert {"accuracy", "f1", "f1_micro", "precision", "recall", "confusion_matrix"} <= names
    assert {n: get_registry("metric").get(n).cls.needs for n in ("f1_micro", "precision", "confusion_matrix")} == {
        "f1_micro": "logits", "precision": "logits", "confusion_matrix": "logits"}


def test_single_label_metrics_against_hand_computed_values():
    # labels a, b, c; references and predictions row by row:
    #   ref  a a a b b c c c
    #   pred a a b b c c c a
    refs = [0, 0, 0, 1, 1, 2, 2, 2]
    preds = [0, 0, 1, 1, 2, 2, 2, 0]
    classes = ClassOutputs(["a", "b", "c"], one_hot_logits(preds, 3), [[r] for r in refs])
    # a: tp 2 fp 1 fn 1 -> P 2/3 R 2/3 F1 2/3; b: tp 1 fp 1 fn 1 -> 1/2 each; c: tp 2 fp 1 fn 1 -> 2/3 each
    assert outputs("accuracy", classes)[0] == pytest.approx(5 / 8)
    assert outputs("f1", classes)[0] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert outputs("f1_micro", classes)[0] == pytest.approx(5 / 8)  # tp 5, fp 3, fn 3
    value, report = outputs("precision", classes)
    assert value == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert report["a"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3.0})
    assert report["b"] == pytest.approx({"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2.0})
    value, _ = outputs("recall", classes)
    assert value == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    value, report = outputs("confusion_matrix", classes)
    assert value == pytest.approx(5 / 8)
    assert report == {"labels": ["a", "b", "c"], "multi_label": False, "matrix": [[2, 1, 0], [0, 1, 1], [1, 0, 2]]}


def test_a_class_never_predicted_scores_zero_and_one_never_seen_is_left_out():
    # ref a a b b, pred a a a a (c is a label but neither reference nor prediction)
    classes = ClassOutputs(["a", "b", "c"], one_hot_logits([0, 0, 0, 0], 3), [[0], [0], [1], [1]])
    # a: tp 2 fp 2 -> P 1/2, R 1, F1 2/3; b: never predicted -> 0
    assert outputs("f1", classes)[0] == pytest.approx((2 / 3 + 0) / 2)
    assert outputs("precision", classes)[0] == pytest.approx((1 / 2 + 0) / 2)
    assert outputs("recall", classes)[0] == pytest.approx((1 + 0) / 2)
    assert math.isnan(outputs("accuracy", ClassOutputs(["a", "b"], [], []))[0])


def test_multi_label_metrics_against_hand_computed_values():
    # a positive logit predicts the class.  rows: ref {a}, {a,b}, {b}, {}; pred {a}, {a}, {a,b}, {b}
    logits = [[1, -1], [1, -1], [1, 1], [-1, 1]]
    classes = ClassOutputs(["a", "b"], logits, [[0], [0, 1], [1], []], multi_label=True)
    # subset accuracy: row 0 only -> 1/4. a: tp 2 fp 1 fn 0 -> F1 4/5; b: tp 1 fp 1 fn 1 -> F1 1/2
    assert outputs("accuracy", classes)[0] == pytest.approx(1 / 4)
    assert outputs("f1", classes)[0] == pytest.approx((4 / 5 + 1 / 2) / 2)
    assert outputs("f1_micro", classes)[0] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))  # tp 3, fp 2, fn 1
    _, report = outputs("confusion_matrix", classes)
    assert report["per_class"] == {"a": [[1, 1], [0, 2]], "b": [[1, 1], [1, 1]]}


def test_logits_metrics_refuse_rows_that_were_not_classified():
    (chosen,) = build_metrics(["confusion_matrix"])
    with pytest.raises(DataError, match="classification head"):
        chosen.metric.compute(MetricInputs(float("nan"), 0, 1, ["x"], ["x"]))


# -- labels and errors ----------------------------------------------------------------------------------
def objective(**options):
    reg = get_registry("objective").get("classify")
    return reg.cls(reg.options_model.model_validate(options))


def test_labels_are_read_sorted_and_ints_sort_numerically():
    from datasets import Dataset

    assert objective().options_from_rows(Dataset.from_list([{"text": "x", "label": v} for v in ["pos", "neg", "pos"]]))["labels"] == ["neg", "pos"]
    assert objective().options_from_rows(Dataset.from_list([{"text": "x", "label": v} for v in [10, 2, 0]]))["labels"] == ["0", "2", "10"]
    weights = objective(class_weights="balanced").options_from_rows(
        Dataset.from_list([{"text": "x", "label": v} for v in ["a", "a", "a", "b"]])
    )["class_weights"]
    assert weights == pytest.approx({"a": 4 / (2 * 3), "b": 4 / (2 * 1)})


@pytest.mark.parametrize(("rows", "options", "error", "match"), [
    ([{"text": "x", "label": "a"}, {"text": "y", "label": "a"}], {}, DataError, "single class"),
    ([{"text": "x", "label": "a"}, {"text": "y", "label": "c"}], {"labels": ["a", "b"]}, DataError, "not among"),
    ([{"text": "x", "label": ["a"]}, {"text": "y", "label": ["b"]}], {}, DataError, "multi_label"),
    ([{"text": "x", "label": "a"}, {"text": "y", "label": "b"}], {"multi_label": True}, DataError, "list of labels"),
    ([{"text": "x", "label": "a"}, {"text": "y", "label": "b"}], {"class_weights": {"z": 2.0}}, ConfigError, "class_weights"),
])
def test_bad_labels_are_clear_errors(rows, options, error, match):
    from datasets import Dataset

    with pytest.raises(error, match=match):
        objective(**options).options_from_rows(Dataset.from_list(rows))


def test_missing_columns_and_unseen_labels_are_clear_errors(tiny_llama: Path, tmp_path: Path):
    tuner = Tuner(model=str(tiny_llama), strategy="head", objective="classify", output_dir=str(tmp_path / "run"), training=quick())
    with pytest.raises(ConfigError, match="'label' column"):
        tuner.fit([{"text": "goal match"}] * 4)
    with pytest.raises(DataError, match="fit no row format"):
        tuner.fit([{"sentence": "goal match", "label": "sport"}] * 4)
    tuner.fit(single_rows(["sport", "food"], n=4))
    with pytest.raises(DataError, match="not trained on"):
        tuner.evaluate([{"text": "song drum", "label": "music"}], metrics=["accuracy"])
    with pytest.raises(ConfigError, match="classification run"):
        Tuner(model=str(tiny_llama), strategy="head").predict(["x"])


# -- training: every strategy x binary / multi-class / multi-label ------------------------------------
TASKS = {
    "binary": (lambda: single_rows(["sport", "food"], n=16), {}),
    "multiclass": (lambda: single_rows(["sport", "food", "music"], n=12, int_labels=True), {}),
    "multilabel": (lambda: multi_rows(48), {"multi_label": True}),
}
RATES = {"full": 2e-3, "head": 2e-2, "lora": 5e-3}


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("strategy", ["full", "head", "lora"])
def test_every_strategy_learns_every_kind_of_task(strategy: str, task: str, tiny_llama: Path, tmp_path: Path):
    make, options = TASKS[task]
    rows = make()
    tuner = Tuner(
        model=str(tiny_llama), strategy=strategy, objective={"name": "classify", **options}, output_dir=str(tmp_path / "run"),
        training=quick(max_steps=40, learning_rate=RATES[strategy], logging_steps=5),
    )
    before = tuner.evaluate(rows, metrics=["loss", "accuracy"])
    result = tuner.fit(rows, rows, metrics=["loss", "accuracy", "f1"])
    assert result.objective == "classify"
    assert result.eval_loss < before.loss
    chance = 1 / 3 if task == "multiclass" else 1 / 2
    assert result.eval_metrics["accuracy"] > chance, result.eval_metrics
    predictions = tuner.predict([rows[0]["text"], rows[1]["text"]])
    assert len(predictions) == 2 and set(predictions[0].probabilities) == set(tuner.config.objective.options["labels"])
    if task == "multilabel":
        assert isinstance(predictions[0].label, list)
    else:
        assert math.isclose(sum(predictions[0].probabilities.values()), 1.0, rel_tol=1e-5)


# -- saving and reloading ------------------------------------------------------------------------------
def logits_of(model, tokenizer, texts: list[str]):
    import torch

    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model.eval()(**enc).logits


@pytest.mark.parametrize("strategy", ["full", "head", "lora"])
def test_saves_reload_in_tunekit_and_in_plain_transformers_or_peft(strategy: str, tiny_gpt2: Path, tmp_path: Path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = single_rows(["sport", "food", "music"], n=6)
    tuner = Tuner(
        model=str(tiny_gpt2), strategy=strategy, objective="classify", output_dir=str(tmp_path / "run"),
        training=quick(max_steps=4, learning_rate=RATES[strategy]),
    )
    result = tuner.fit(rows, rows[:6], metrics=["accuracy", "confusion_matrix"])
    run = Path(result.output_dir)
    assert (run / "confusion_matrix.png").stat().st_size > 0
    assert json.loads((run / "result.json").read_text())["eval_reports"]["confusion_matrix"]["labels"] == ["food", "music", "sport"]
    texts = ["goal match team", "bread soup", "song"]  # different lengths: padding must not move the pooled token
    expected = logits_of(tuner.model, tuner.tokenizer, texts)

    reloaded = Tuner.load(run)
    assert torch.allclose(logits_of(reloaded.model, reloaded.tokenizer, texts), expected, atol=1e-5)
    assert [p.label for p in reloaded.predict(texts)] == [p.label for p in tuner.predict(texts)]

    saved = run / "model"
    tokenizer = AutoTokenizer.from_pretrained(saved)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    if strategy == "lora":
        from peft import PeftModel

        assert json.loads((saved / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
        base = AutoModelForSequenceClassification.from_pretrained(
            tiny_gpt2, num_labels=3, pad_token_id=tokenizer.pad_token_id,
        )
        plain = PeftModel.from_pretrained(base, saved)
    else:
        plain = AutoModelForSequenceClassification.from_pretrained(saved)
        assert plain.config.id2label == {0: "food", 1: "music", 2: "sport"}
        assert plain.config.pad_token_id == tokenizer.pad_token_id
    assert torch.allclose(logits_of(plain, tokenizer, texts), expected, atol=1e-5)


def test_lora_classifier_merges_into_a_plain_sequence_classifier(tiny_llama: Path, tmp_path: Path):
    import torch
    from transformers import AutoModelForSequenceClassification

    rows = single_rows(["sport", "food"], n=6)
    tuner = Tuner(model=str(tiny_llama), strategy="lora", objective="classify", output_dir=str(tmp_path / "run"), training=quick(max_steps=3))
    tuner.fit(rows)
    texts = ["goal match", "bread soup apple"]
    expected = logits_of(tuner.model, tuner.tokenizer, texts)
    out = tuner.save_merged(tmp_path / "merged")
    plain = AutoModelForSequenceClassification.from_pretrained(out)
    assert torch.allclose(logits_of(plain, tuner.tokenizer, texts), expected, atol=1e-4)


# -- options -------------------------------------------------------------------------------------------
def test_class_weights_weigh_the_loss(tiny_llama: Path):
    import torch
    import torch.nn.functional as F

    from tunekit.builtin.classify import ClassBatches

    weighted = objective(labels=["a", "b"], class_weights={"b": 3.0})
    tuner = Tuner(model=str(tiny_llama), strategy="head", objective={"name": "classify", "labels": ["a", "b"]})
    batch = ClassBatches(pad_token_id=int(tuner.tokenizer.pad_token_id))(
        [{"input_ids": [5, 6, 7], "labels": 0}, {"input_ids": [8, 9], "labels": 1}]
    )
    with torch.no_grad():
        logits = tuner.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        expected = F.cross_entropy(logits, batch["labels"], weight=torch.tensor([1.0, 3.0]), reduction="sum") / 2
        assert weighted.loss(tuner.model, batch) == pytest.approx(float(expected), rel=1e-5)


def test_text_pairs_and_the_run_config_keep_the_labels(tiny_gpt2: Path, tmp_path: Path):
    rows = [{"text": r["text"], "text_pair": "about it", "label": r["label"]} for r in single_rows(["sport", "food"], n=6)]
    tuner = Tuner(model=str(tiny_gpt2), strategy="head", objective="classify", output_dir=str(tmp_path / "run"), training=quick(max_steps=2))
    result = tuner.fit(rows)
    import yaml

    saved = yaml.safe_load((Path(result.output_dir) / "tunekit.yaml").read_text())
    assert saved["objective"]["labels"] == ["food", "sport"]  # read from the rows, written with the run
    reloaded = Tuner.load(result.output_dir)
    assert reloaded.config.objective.options["labels"] == ["food", "sport"]
    assert len(reloaded.predict(["goal"], text_pairs=["about it"])) == 1
    evaluated = reloaded.evaluate(rows, metrics=["accuracy", "precision", "recall", "f1_micro"])
    assert set(evaluated.reports["precision"]) == {"food", "sport"}


# -- the shipped task ------------------------------------------------------------------------------------
def test_word_sentiment_task_is_balanced_and_held_out():
    from collections import Counter

    from tunekit.tasks import load_task

    train, test = load_task("word-sentiment", "train"), load_task("word-sentiment", "test")
    assert Counter(r["label"] for r in train) == {"positive": 300, "negative": 300}
    assert Counter(r["label"] for r in test) == {"positive": 100, "negative": 100}
    assert all(r["text"].isalpha() and r["text"].islower() for r in train + test)
    assert not {r["text"][:5] for r in train} & {r["text"][:5] for r in test}


def test_word_sentiment_script_rebuilds_the_shipped_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import importlib.util
    import sys

    wheel = Path("/tmp/dl/vaderSentiment-3.3.2-py2.py3-none-any.whl")
    if not wheel.is_file():
        pytest.skip("the vaderSentiment 3.3.2 wheel is not downloaded (see scripts/make_word_sentiment.py)")
    spec = importlib.util.spec_from_file_location("make_word_sentiment", Path(__file__).parents[1] / "scripts" / "make_word_sentiment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUT", tmp_path)
    monkeypatch.setattr(sys, "argv", ["make_word_sentiment.py", str(wheel)])
    module.main()
    shipped = Path(module.__file__).parents[1] / "src" / "tunekit" / "tasks" / "word_sentiment"
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / name).read_text() == (shipped / name).read_text()


# -- compare -------------------------------------------------------------------------------------------
def label_word_rows(rows: list[dict]) -> list[dict]:
    """The same rows twice over: text/label for a classifier, and a prompt/label word for sft."""
    return [{**r, "prompt": f"Topic of '{r['text']}':", "completion": f" {r['label']}"} for r in rows]


# A classifier candidate moves the prompt/completion columns aside, so its rows read as text/label.
AS_CLASSIFICATION = {"columns": {"prompt": "unused_prompt", "completion": "unused_completion"}}


def test_compare_puts_label_words_and_classification_heads_side_by_side(tiny_llama: Path, tmp_path: Path):
    from tunekit import compare

    rows = label_word_rows(single_rows(["sport", "food"], n=8))
    report = compare(
        str(tiny_llama),
        [
            {"name": "sft label words", "strategy": "lora", "objective": "sft"},
            {"name": "head classify", "strategy": "head", "objective": "classify", "data": AS_CLASSIFICATION},
            {"name": "lora classify", "strategy": "lora", "objective": "classify", "data": AS_CLASSIFICATION},
        ],
        rows, rows[:8], budget={"max_steps": 3}, seeds=[0], metrics=["loss", "accuracy", "f1"], base=True,
        training={"batch_size": 8, "progress_bar": False}, output_dir=tmp_path / "report", progress=False, keep_models=False,
    )
    by_name = {c.name: c for c in report.candidates}
    assert set(by_name) == {"base", "sft label words", "head classify", "lora classify"}
    for name, candidate in by_name.items():
        assert candidate.status == "ok", (name, candidate.error_message)
        (accuracy,), (f1,) = candidate.values("accuracy"), candidate.values("f1")
        assert 0.0 <= accuracy <= 1.0 and 0.0 <= f1 <= 1.0
    assert by_name["head classify"].values("trainable_params") < by_name["lora classify"].values("trainable_params")
    assert "head classify" in report.to_markdown()


def test_preflight_says_it_does_not_audit_a_classification_head(tiny_llama: Path):
    tuner = Tuner(model=str(tiny_llama), strategy="head", objective={"name": "classify", "labels": ["food", "sport"]})
    with pytest.raises(ConfigError, match="does not audit"):
        tuner.preflight(single_rows(["sport", "food"], n=2), estimate=False)


def test_evaluations_during_training_use_the_classifier_loss(tiny_llama: Path, tmp_path: Path):
    rows = single_rows(["sport", "food"], n=8)
    tuner = Tuner(
        model=str(tiny_llama), strategy="head", objective="classify", output_dir=str(tmp_path / "run"),
        training=quick(max_steps=4, eval_steps=2, learning_rate=2e-2),
    )
    result = tuner.fit(rows, rows[:8])
    assert [p.step for p in result.eval_history] == [2, 4]
    assert all(math.isfinite(p.loss) and p.loss > 0 for p in result.eval_history)
    assert result.eval_history[-1].loss == pytest.approx(result.eval_loss, rel=1e-4)


def test_streamed_rows_need_the_labels_given(tiny_llama: Path, tmp_path: Path):
    from datasets import Dataset

    stream = Dataset.from_list(single_rows(["sport", "food"], n=8)).to_iterable_dataset()
    training = quick(max_steps=2)
    with pytest.raises(ConfigError, match="stream"):
        Tuner(model=str(tiny_llama), strategy="head", objective="classify", output_dir=str(tmp_path / "a"), training=training).fit(stream)
    tuner = Tuner(model=str(tiny_llama), strategy="head", objective={"name": "classify", "labels": ["food", "sport"]},
                  output_dir=str(tmp_path / "b"), training=training)
    assert tuner.fit(stream).steps == 2


@pytest.mark.parametrize("quantizer", ["bnb-8bit", "bnb-4bit"])
def test_lora_classifier_trains_on_a_quantized_base_and_reloads(quantizer: str, tiny_llama: Path, tmp_path: Path):
    rows = single_rows(["sport", "food"], n=16)
    tuner = Tuner(model=str(tiny_llama), strategy="lora", quantizer=quantizer, objective="classify",
                  output_dir=str(tmp_path / "run"), training=quick(max_steps=20, learning_rate=5e-3))
    before = tuner.evaluate(rows, metrics=["loss", "accuracy"])
    result = tuner.fit(rows, rows, metrics=["loss", "accuracy"])
    assert result.eval_loss < before.loss
    assert result.eval_metrics["accuracy"] > 0.5
    again = Tuner.load(tmp_path / "run")
    assert again.config.quantizer.name == quantizer
    assert again.predict([rows[0]["text"]])[0].label == tuner.predict([rows[0]["text"]])[0].label
