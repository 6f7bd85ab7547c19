"""Metrics: ``loss``, ``perplexity``, and the generation metrics ``exact_match``, ``accuracy``, ``f1``.

The generation metrics compare the model's greedy answer to each ``sft`` row with the
row's reference answer, after normalising both (``strip``, ``case_fold``).

``accuracy`` and ``f1`` treat the answers as class labels. The label set is the
``labels`` option, or else the distinct (normalised) references; an answer is read as
the label it equals, or else as the longest label it starts with (followed by a
non-alphanumeric character: ``"positive, because..."`` reads as ``positive``), or else
as no label at all, which is always wrong.

On the rows of a classification run (``objective='classify'``) ``accuracy`` and ``f1`` read the
classification head's logits instead (no generation), as do the metrics that need ``"logits"``:
``f1_micro``, ``precision`` and ``recall`` (macro averages, with per-class figures in
``EvalResult.reports``) and ``confusion_matrix`` (its value is the share of rows on the diagonal,
i.e. accuracy; the matrix is in ``EvalResult.reports["confusion_matrix"]`` and, after ``fit``, drawn
as ``confusion_matrix.png`` in the run directory).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from pydantic import Field

from tunekit.evaluation import TextNormalization, normalize
from tunekit.hookspecs import Register, hookimpl
from tunekit.parts import ClassOutputs, MetricInputs, NoOptions


class LossMetric:
    """Mean cross-entropy per trained token (the answer tokens for sft rows)."""

    name: ClassVar[str] = "loss"
    description: ClassVar[str] = "Mean cross-entropy per trained token (lower is better)."
    Options: ClassVar[type[NoOptions]] = NoOptions
    needs: ClassVar[str] = "loss"
    higher_is_better: ClassVar[bool] = False

    def __init__(self, options: NoOptions):
        self.options = options

    def compute(self, inputs: MetricInputs) -> float:
        return float(inputs.loss)


class PerplexityMetric:
    """exp(loss): the effective number of tokens the model hesitates between."""

    name: ClassVar[str] = "perplexity"
    description: ClassVar[str] = "exp(loss) per trained token (lower is better)."
    Options: ClassVar[type[NoOptions]] = NoOptions
    needs: ClassVar[str] = "loss"
    higher_is_better: ClassVar[bool] = False

    def __init__(self, options: NoOptions):
        self.options = options

    def compute(self, inputs: MetricInputs) -> float:
        return math.exp(min(inputs.loss, 700.0)) if not math.isnan(inputs.loss) else float("nan")


class ExactMatchMetric:
    """Fraction of rows whose normalised answer equals the normalised reference."""

    name: ClassVar[str] = "exact_match"
    description: ClassVar[str] = "Generated answer == reference answer, after strip/case-fold (higher is better)."
    Options: ClassVar[type[TextNormalization]] = TextNormalization
    needs: ClassVar[str] = "generation"
    higher_is_better: ClassVar[bool] = True

    def __init__(self, options: TextNormalization):
        self.options = options

    def compute(self, inputs: MetricInputs) -> float:
        o = self.options
        pairs = inputs.pairs(self.name)
        if not pairs:
            return float("nan")
        hits = sum(normalize(p, strip=o.strip, case_fold=o.case_fold) == normalize(r, strip=o.strip, case_fold=o.case_fold) for p, r in pairs)
        return hits / len(pairs)


class LabelOptions(TextNormalization):
    labels: list[str] | None = Field(
        default=None,
        description="The class labels; None uses the distinct reference answers. Answers are read as the "
        "label they equal or start with.",
    )


def read_label(prediction: str, labels: list[str]) -> str | None:
    """The label ``prediction`` (already normalised) equals, or the longest one it starts with, or None."""
    if prediction in labels:
        return prediction
    best: str | None = None
    for label in labels:
        if label and prediction.startswith(label):
            rest = prediction[len(label) :]
            if (not rest[0].isalnum()) and (best is None or len(label) > len(best)):
                best = label
    return best


def _labelled(options: LabelOptions, inputs: MetricInputs, metric: str) -> tuple[list[str | None], list[str]]:
    pairs = inputs.pairs(metric)

    def norm(text: str) -> str:
        return normalize(text, strip=options.strip, case_fold=options.case_fold)

    references = [norm(r) for _, r in pairs]
    labels = [norm(label) for label in options.labels] if options.labels is not None else sorted(set(references))
    return [read_label(norm(p), labels) for p, _ in pairs], references


class AccuracyMetric:
    """Fraction of rows whose answer, read as a class label, is the reference label."""

    name: ClassVar[str] = "accuracy"
    description: ClassVar[str] = "Answer read as a class label == reference label (higher is better)."
    Options: ClassVar[type[LabelOptions]] = LabelOptions
    needs: ClassVar[str] = "generation"
    higher_is_better: ClassVar[bool] = True

    def __init__(self, options: LabelOptions):
        self.options = options

    def compute(self, inputs: MetricInputs) -> float:
        if inputs.classes is not None:
            return class_accuracy(inputs.classes)
        predicted, references = _labelled(self.options, inputs, self.name)
        if not references:
            return float("nan")
        return sum(p == r for p, r in zip(predicted, references, strict=True)) / len(references)


def macro_f1(predicted: list[str | None], references: list[str]) -> float:
    """Unweighted mean of the per-class F1 over every class that is a reference or a prediction.

    An answer read as no label (``None``) is a miss for its reference class and a false
    positive for none. A class never predicted, or predicted but never a reference, has F1 0.
    """
    classes = sorted(set(references) | {p for p in predicted if p is not None})
    if not classes:
        return float("nan")
    scores = []
    for c in classes:
        tp = sum(p == c and r == c for p, r in zip(predicted, references, strict=True))
        fp = sum(p == c and r != c for p, r in zip(predicted, references, strict=True))
        fn = sum(p != c and r == c for p, r in zip(predicted, references, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


class F1Metric:
    """Macro-averaged F1 of the answers read as class labels."""

    name: ClassVar[str] = "f1"
    description: ClassVar[str] = "Macro F1 over the class labels the answers are read as (higher is better)."
    Options: ClassVar[type[LabelOptions]] = LabelOptions
    needs: ClassVar[str] = "generation"
    higher_is_better: ClassVar[bool] = True

    def __init__(self, options: LabelOptions):
        self.options = options

    def compute(self, inputs: MetricInputs) -> float:
        if inputs.classes is not None:
            return class_f1(inputs.classes, average="macro")
        predicted, references = _labelled(self.options, inputs, self.name)
        return macro_f1(predicted, references)


# -- from a classification head's logits -------------------------------------------------------------
def class_counts(classes: ClassOutputs) -> dict[str, dict[str, int]]:
    """Per class: ``tp``, ``fp``, ``fn`` and ``support`` (rows whose reference holds the class)."""
    counts = {label: {"tp": 0, "fp": 0, "fn": 0, "support": 0} for label in classes.labels}
    for predicted, reference in zip(classes.predicted(), classes.references, strict=True):
        p, r = set(predicted), set(reference)
        for j, label in enumerate(classes.labels):
            c = counts[label]
            c["tp"] += j in p and j in r
            c["fp"] += j in p and j not in r
            c["fn"] += j not in p and j in r
            c["support"] += j in r
    return counts


def _scored_classes(classes: ClassOutputs, counts: dict[str, dict[str, int]]) -> list[str]:
    """The classes a macro average runs over: every label with ``multi_label``; else those that are a
    reference or a prediction (as for generated labels, and scikit-learn's default)."""
    if classes.multi_label:
        return list(classes.labels)
    return [c for c in classes.labels if counts[c]["support"] or counts[c]["fp"]]


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def class_accuracy(classes: ClassOutputs) -> float:
    """Rows whose predicted classes are exactly the reference ones (subset accuracy with ``multi_label``)."""
    if not classes.references:
        return float("nan")
    hits = sum(set(p) == set(r) for p, r in zip(classes.predicted(), classes.references, strict=True))
    return hits / len(classes.references)


def class_f1(classes: ClassOutputs, *, average: str) -> float:
    """Macro F1 (the mean of the per-class F1) or micro F1 (from the pooled counts)."""
    if not classes.references:
        return float("nan")
    counts = class_counts(classes)
    if average == "micro":
        tp, fp, fn = (sum(c[k] for c in counts.values()) for k in ("tp", "fp", "fn"))
        return _ratio(2 * tp, 2 * tp + fp + fn)
    scored = _scored_classes(classes, counts)
    if not scored:
        return float("nan")
    return sum(_ratio(2 * counts[c]["tp"], 2 * counts[c]["tp"] + counts[c]["fp"] + counts[c]["fn"]) for c in scored) / len(scored)


def per_class(classes: ClassOutputs) -> dict[str, dict[str, float]]:
    """``{label: {precision, recall, f1, support}}``: a class never predicted has precision 0."""
    out = {}
    for label, c in class_counts(classes).items():
        out[label] = {
            "precision": _ratio(c["tp"], c["tp"] + c["fp"]),
            "recall": _ratio(c["tp"], c["tp"] + c["fn"]),
            "f1": _ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"]),
            "support": float(c["support"]),
        }
    return out


def confusion_matrix(classes: ClassOutputs) -> dict[str, Any]:
    """Rows are the reference class, columns the predicted one (``labels`` in id order). With
    ``multi_label``, one ``[[tn, fp], [fn, tp]]`` matrix per class under ``per_class``."""
    labels = classes.labels
    if classes.multi_label:
        n = len(classes.references)
        per = {
            label: [[n - c["tp"] - c["fp"] - c["fn"], c["fp"]], [c["fn"], c["tp"]]]
            for label, c in class_counts(classes).items()
        }
        return {"labels": labels, "multi_label": True, "per_class": per}
    matrix = [[0] * len(labels) for _ in labels]
    for predicted, reference in zip(classes.predicted(), classes.references, strict=True):
        matrix[reference[0]][predicted[0]] += 1
    return {"labels": labels, "multi_label": False, "matrix": matrix}


class _ClassMetric:
    Options: ClassVar[type[NoOptions]] = NoOptions
    needs: ClassVar[str] = "logits"
    higher_is_better: ClassVar[bool] = True

    def __init__(self, options: NoOptions):
        self.options = options


class MicroF1Metric(_ClassMetric):
    """Micro-averaged F1 of a classification head (equal to accuracy for single-label rows)."""

    name: ClassVar[str] = "f1_micro"
    description: ClassVar[str] = "Micro F1 of a classification head, from its logits (higher is better)."

    def compute(self, inputs: MetricInputs) -> float:
        return class_f1(inputs.class_outputs(self.name), average="micro")


class PrecisionMetric(_ClassMetric):
    """Macro-averaged precision of a classification head; per-class precision/recall/F1 in its report."""

    name: ClassVar[str] = "precision"
    description: ClassVar[str] = "Macro precision of a classification head; per-class figures in reports (higher is better)."
    field: ClassVar[str] = "precision"

    def compute(self, inputs: MetricInputs) -> float:
        classes = inputs.class_outputs(self.name)
        if not classes.references:
            return float("nan")
        figures = per_class(classes)
        scored = _scored_classes(classes, class_counts(classes))
        return sum(figures[c][self.field] for c in scored) / len(scored) if scored else float("nan")

    def report(self, inputs: MetricInputs) -> dict[str, Any]:
        return per_class(inputs.class_outputs(self.name))


class RecallMetric(PrecisionMetric):
    """Macro-averaged recall of a classification head; per-class precision/recall/F1 in its report."""

    name: ClassVar[str] = "recall"
    description: ClassVar[str] = "Macro recall of a classification head; per-class figures in reports (higher is better)."
    field: ClassVar[str] = "recall"


class ConfusionMatrixMetric(_ClassMetric):
    """The confusion matrix of a classification head (in the report); its value is the diagonal's share."""

    name: ClassVar[str] = "confusion_matrix"
    description: ClassVar[str] = (
        "Confusion matrix of a classification head (reports['confusion_matrix'], confusion_matrix.png after fit); "
        "value: rows on the diagonal (accuracy)."
    )

    def compute(self, inputs: MetricInputs) -> float:
        return class_accuracy(inputs.class_outputs(self.name))

    def report(self, inputs: MetricInputs) -> dict[str, Any]:
        return confusion_matrix(inputs.class_outputs(self.name))


class PreferenceAccuracyMetric:
    """Share of preference pairs whose chosen answer the model scores higher than the rejected one.

    A language model scores an answer by its summed log-probability given the prompt (so it needs no
    reference model and measures a base model as well as a DPO-tuned one); a reward model by its reward.
    A tie counts half.
    """

    name: ClassVar[str] = "preference_accuracy"
    description: ClassVar[str] = "Share of pairs whose chosen answer scores higher than the rejected one (log-prob or reward)."
    Options: ClassVar[type[NoOptions]] = NoOptions
    needs: ClassVar[str] = "pairs"
    higher_is_better: ClassVar[bool] = True

    def __init__(self, options: NoOptions):
        self.options = options

    def compute(self, inputs: MetricInputs) -> float:
        return inputs.pair_scores(self.name).accuracy()

    def report(self, inputs: MetricInputs) -> dict[str, Any]:
        scores = inputs.pair_scores(self.name)
        return {"pairs": len(scores.chosen), "mean_margin": scores.margin()}


@hookimpl
def register_metrics(register: Register) -> None:
    for metric in (
        LossMetric, PerplexityMetric, ExactMatchMetric, AccuracyMetric, F1Metric,
        MicroF1Metric, PrecisionMetric, RecallMetric, ConfusionMatrixMetric, PreferenceAccuracyMetric,
    ):
        register(metric)
