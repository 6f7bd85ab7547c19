"""Metrics: ``loss``, ``perplexity``, and the generation metrics ``exact_match``, ``accuracy``, ``f1``.

The generation metrics compare the model's greedy answer to each ``sft`` row with the
row's reference answer, after normalising both (``strip``, ``case_fold``).

``accuracy`` and ``f1`` treat the answers as class labels. The label set is the
``labels`` option, or else the distinct (normalised) references; an answer is read as
the label it equals, or else as the longest label it starts with (followed by a
non-alphanumeric character: ``"positive, because..."`` reads as ``positive``), or else
as no label at all, which is always wrong.
"""

from __future__ import annotations

import math
from typing import ClassVar

from pydantic import Field

from tunekit.evaluation import TextNormalization, normalize
from tunekit.hookspecs import Register, hookimpl
from tunekit.parts import MetricInputs, NoOptions


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
        predicted, references = _labelled(self.options, inputs, self.name)
        return macro_f1(predicted, references)


@hookimpl
def register_metrics(register: Register) -> None:
    for metric in (LossMetric, PerplexityMetric, ExactMatchMetric, AccuracyMetric, F1Metric):
        register(metric)
