"""``classify``: a classification head on the last real token (transformers' ``*ForSequenceClassification``).

Rows are ``{"text", "label"}`` (and optionally ``"text_pair"``). The label set is read from the
training rows (sorted, so the same data always gives the same ids) unless the ``labels`` option
names it, and it is written into the saved config (the objective's options) and the model's
config (``id2label``/``label2id``), so a saved run reloads with the same head, in tunekit and in
plain transformers. The loss is cross-entropy (optionally class-weighted), or per-class binary
cross-entropy with ``multi_label`` (each row's ``label`` then is a list of labels).

>>> o = ClassifyObjective(ClassifyOptions(labels=["neg", "pos"]))
>>> o.model_kwargs()["id2label"]
{0: 'neg', 1: 'pos'}
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from tunekit.data.pipeline import is_stream
from tunekit.errors import ConfigError, DataError, Problem
from tunekit.parts import ClassOutputs, PartOptions

if TYPE_CHECKING:
    import torch
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

TASK = "sequence-classification"
PAIR_SEPARATOR = "\n"
"""Between ``text`` and ``text_pair``, for tokenizers without a pair template of their own (decoder models)."""


class ClassifyOptions(PartOptions):
    labels: list[str] | None = Field(
        default=None,
        description="The class names in id order; None reads them from the training rows (sorted: numbers "
        "numerically, else as text). Filled in by fit and saved with the run.",
    )
    multi_label: bool = Field(
        default=False,
        description="Each row's label is a list of labels (any number of classes per row); trained with "
        "per-class binary cross-entropy, a class predicted where its sigmoid is above 0.5.",
    )
    class_weights: Literal["balanced"] | dict[str, float] | None = Field(
        default=None,
        description="Weights of the classes in the loss, for imbalanced data: 'balanced' (n_rows / "
        "(n_classes x rows of the class), resolved from the training rows when fit starts) or a mapping "
        "label -> weight (others 1.0). With multi_label they weigh each class's positive rows (pos_weight).",
    )


def _sorted_labels(values: set[Any]) -> list[str]:
    """Sorted label names: numbers numerically (so 0..n-1 keep their ids), else as text."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [str(v) for v in sorted(values)]
    return sorted({str(v) for v in values})


@dataclass(frozen=True)
class Prediction:
    """What ``Tuner.predict`` returns per text: the predicted label (a list of labels with
    ``multi_label``) and every class's probability (softmax; sigmoid per class with ``multi_label``)."""

    label: str | list[str]
    probabilities: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        """``prediction["label"]`` / ``prediction["probabilities"]``, as for a mapping."""
        if key not in {"label", "probabilities"}:
            raise KeyError(key)
        return getattr(self, key)


class ClassifyObjective:
    """Sequence classification with a new head on the last real (non-padding) token.

    The model is loaded as ``AutoModelForSequenceClassification`` with ``num_labels``, ``id2label``,
    ``label2id`` and ``problem_type``; its config gets the tokenizer's pad token, which is how
    transformers finds the last real token of a padded row. Works with ``full``, ``head`` (the new
    ``score`` head, optionally the last blocks) and ``lora`` (peft's sequence-classification task,
    the head trained and saved in full).
    """

    name: ClassVar[str] = "classify"
    description: ClassVar[str] = (
        "Classification head on the last token (text/label rows): cross-entropy or multi-label BCE, "
        "labels read from the data."
    )
    Options: ClassVar[type[ClassifyOptions]] = ClassifyOptions
    task: ClassVar[str] = TASK
    learned_options: ClassVar[tuple[str, ...]] = ("labels",)
    """Options ``options_from_rows`` fills in: once set (a trained run), evaluating leaves them as they are."""

    def __init__(self, options: ClassifyOptions):
        self.options = options

    def accepts(self, row_format: str) -> bool:
        return row_format == "classification"

    # -- labels ------------------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        if not self.options.labels:
            raise ConfigError([Problem("objective.labels", (
                "the classify objective does not know its labels yet, so the classification head cannot be built; "
                "fit on labelled rows first (the labels are read from them), or give them: "
                "objective={'name': 'classify', 'labels': [...]}"))])
        return list(self.options.labels)

    def _row_labels(self, value: Any, where: str) -> list[Any]:
        """The labels of one row: one, or (multi_label) a list; a ``DataError`` for anything else."""
        if self.options.multi_label:
            if not isinstance(value, (list, tuple)):
                raise DataError(
                    f"{where}: with multi_label each label must be a list of labels (e.g. ['sports', 'politics']), "
                    f"got {type(value).__name__} {value!r:.60}."
                )
            items = list(value)
        else:
            if isinstance(value, (list, tuple, dict)):
                raise DataError(
                    f"{where}: the label is a {type(value).__name__} ({value!r:.60}); a label is one string or "
                    "integer. For rows with several labels set the classify option multi_label=true."
                )
            items = [value]
        for item in items:
            if not isinstance(item, (str, int)) or isinstance(item, bool) or (isinstance(item, str) and not item.strip()):
                raise DataError(f"{where}: a label must be a non-empty string or an integer, got {item!r:.60}.")
        return items

    def options_from_rows(self, rows: Dataset, *, training: bool = True) -> dict[str, Any]:
        """The options with the label set read from ``rows`` (when not given) and ``class_weights='balanced'``
        resolved from the rows' counts (when ``training``); a ``DataError`` for a single class, or for a
        label outside a given label set."""
        o = self.options
        if is_stream(rows):  # a stream is read once, by training: its labels cannot be counted first
            if not o.labels or o.class_weights == "balanced":
                raise ConfigError([Problem("objective.labels", (
                    "the training rows are a stream, whose labels cannot be read before training; give the labels "
                    "(objective={'name': 'classify', 'labels': [...]}) and class_weights as a mapping, not 'balanced'"))])
            return o.model_dump()
        counts: Counter[str] = Counter()
        seen: set[Any] = set()
        for i, value in enumerate(rows["label"]):
            items = self._row_labels(value, f"training row {i}")
            seen.update(items)
            counts.update({str(v) for v in items})
        labels = list(o.labels) if o.labels else _sorted_labels(seen)
        unknown = sorted(set(counts) - set(labels))
        if unknown:
            raise DataError(
                f"the training rows have labels {unknown[:5]} that are not among the classify labels {labels[:10]}; "
                "add them to objective.labels, or fix the rows."
            )
        if len(labels) < 2 and not o.multi_label:
            raise DataError(
                f"the training rows have a single class ({labels[0]!r}) and a classifier needs at least two; "
                "add rows of the other classes (or use multi_label for yes/no per class)."
            )
        options = o.model_dump()
        options["labels"] = labels
        if training and o.class_weights == "balanced":
            n = sum(1 for _ in rows["label"])
            if o.multi_label:  # pos_weight: negatives over positives, per class
                options["class_weights"] = {c: round((n - counts[c]) / counts[c], 6) if counts[c] else 1.0 for c in labels}
            else:
                options["class_weights"] = {c: round(n / (len(labels) * counts[c]), 6) if counts[c] else 1.0 for c in labels}
        elif isinstance(o.class_weights, dict):
            bad = sorted(set(o.class_weights) - set(labels))
            if bad:
                raise ConfigError([Problem("objective.class_weights", (
                    f"weighs {bad[:5]}, which are not labels of the data ({', '.join(labels[:10])})"))])
        return options

    def model_kwargs(self) -> dict[str, Any]:
        """``from_pretrained`` arguments of the classification model."""
        labels = self.labels
        return {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
            "problem_type": "multi_label_classification" if self.options.multi_label else "single_label_classification",
        }

    # -- tokens ------------------------------------------------------------------------------------
    def _encode(self, tokenizer: PreTrainedTokenizerBase, texts: list[str], pairs: list[str | None] | None, max_length: int) -> list[list[int]]:
        joined = [t if not pairs or pairs[i] is None else f"{t}{PAIR_SEPARATOR}{pairs[i]}" for i, t in enumerate(texts)]
        out = tokenizer(joined, truncation=True, max_length=max_length)["input_ids"]
        empty = [i for i, ids in enumerate(out) if not ids]
        if empty:
            raise DataError(f"row {empty[0]} has an empty text, which gives the classifier no token to read.")
        return [list(ids) for ids in out]

    def tokenize(self, rows: Dataset, tokenizer: PreTrainedTokenizerBase, *, max_length: int) -> Dataset:
        labels = self.labels
        index = {label: i for i, label in enumerate(labels)}
        multi = self.options.multi_label

        def batch(b: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
            ids = self._encode(tokenizer, b["text"], b.get("text_pair"), max_length)
            targets: list[Any] = []
            for value, i in zip(b["label"], indices, strict=True):
                items = [str(v) for v in self._row_labels(value, f"row {i}")]
                missing = [v for v in items if v not in index]
                if missing:
                    raise DataError(
                        f"row {i} has the label {missing[0]!r}, which the classifier was not trained on "
                        f"(its labels: {', '.join(labels[:10])}); evaluate on labels seen in training."
                    )
                if multi:
                    targets.append([1.0 if c in items else 0.0 for c in labels])
                else:
                    targets.append(index[items[0]])
            return {"input_ids": ids, "labels": targets, "length": [len(x) for x in ids], "row": indices}

        if is_stream(rows):
            return rows.map(batch, batched=True, with_indices=True, remove_columns=list(rows.column_names or []))
        return rows.map(batch, batched=True, with_indices=True, remove_columns=rows.column_names, desc="tokenizing (classify)")

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> ClassBatches:
        return ClassBatches(pad_token_id=int(tokenizer.pad_token_id), multi_label=self.options.multi_label)

    # -- loss and scores ---------------------------------------------------------------------------
    def _weights(self, device: Any) -> torch.Tensor | None:
        import torch

        weights = self.options.class_weights
        if not isinstance(weights, dict):
            return None
        return torch.tensor([float(weights.get(c, 1.0)) for c in self.labels], dtype=torch.float32, device=device)

    def loss(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        """Cross-entropy of the head's logits (class-weighted with ``class_weights``), or per-class BCE with
        ``multi_label``; summed and divided by ``num_items_in_batch`` when the Trainer counted the items."""
        loss, _ = self._loss_and_logits(model, inputs, reduction="sum")
        labels = inputs["labels"]
        if num_items_in_batch is not None:
            if hasattr(num_items_in_batch, "to"):
                num_items_in_batch = num_items_in_batch.to(loss.device)
            return loss / num_items_in_batch
        return loss / max(int(labels.numel()), 1)

    def _loss_and_logits(self, model: torch.nn.Module, inputs: dict[str, Any], *, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
        import torch.nn.functional as F

        inputs = dict(inputs)
        labels = inputs.pop("labels")
        logits = model(**inputs).logits.float()
        weights = self._weights(logits.device)
        if self.options.multi_label:
            loss = F.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=weights, reduction=reduction)
        else:
            loss = F.cross_entropy(logits, labels, weight=weights, reduction=reduction)
        return loss, logits

    def evaluate_rows(self, model: torch.nn.Module, tokenized: Dataset, *, batch_size: int = 8, pad_token_id: int = 0) -> tuple[float, ClassOutputs]:
        """Mean loss per row (per row and class with ``multi_label``) and the head's logits on ``tokenized``."""
        collate = ClassBatches(pad_token_id=pad_token_id, multi_label=self.options.multi_label)
        total, items, logits_out, references = 0.0, 0, [], []
        features = (tokenized[i] for i in range(len(tokenized)))
        for rows, batch in in_eval_batches(model, features, collate, batch_size):
            loss, logits = self._loss_and_logits(model, batch, reduction="sum")
            total += float(loss)
            items += int(batch["labels"].numel())
            logits_out += logits.cpu().tolist()
            for row in rows:
                label = row["labels"]
                references.append([j for j, v in enumerate(label) if v > 0.5] if self.options.multi_label else [int(label)])
        mean = total / items if items else float("nan")
        return mean, ClassOutputs(self.labels, logits_out, references, multi_label=self.options.multi_label)

    def predict(
        self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str], *,
        text_pairs: list[str] | None = None, batch_size: int = 8, max_length: int = 512,
    ) -> list[Prediction]:
        """The predicted label and class probabilities of each text."""
        import torch

        if isinstance(texts, str):
            texts = [texts]
        if not all(isinstance(t, str) for t in texts):
            raise DataError("predict takes a list of texts (strings).")
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise DataError(f"predict was given {len(texts)} texts but {len(text_pairs)} text_pairs; give one pair per text.")
        labels = self.labels
        ids = self._encode(tokenizer, list(texts), list(text_pairs) if text_pairs is not None else None, max_length) if texts else []
        collate = ClassBatches(pad_token_id=int(tokenizer.pad_token_id), multi_label=self.options.multi_label)
        out: list[Prediction] = []
        for _, batch in in_eval_batches(model, ({"input_ids": x} for x in ids), collate, batch_size):
            logits = model(**batch).logits.float()
            probs = torch.sigmoid(logits) if self.options.multi_label else torch.softmax(logits, dim=-1)
            for row in probs.cpu().tolist():
                probabilities = {label: float(p) for label, p in zip(labels, row, strict=True)}
                if self.options.multi_label:
                    out.append(Prediction([c for c, p in probabilities.items() if p > 0.5], probabilities))
                else:
                    out.append(Prediction(max(probabilities, key=probabilities.__getitem__), probabilities))
        return out


def in_eval_batches(
    model: torch.nn.Module, features: Iterator[dict[str, Any]], collate: ClassBatches, batch_size: int,
) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """``(rows, batch on the model's device)`` for every ``batch_size`` features, with the model in eval
    mode and gradients off; the model's mode is restored afterwards (also on an error)."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            while rows := list(itertools.islice(features, batch_size)):
                yield rows, {k: v.to(device) for k, v in collate(rows).items()}
    finally:
        model.train(was_training)


@dataclass
class ClassBatches:
    """Right-pads ``input_ids`` per batch (with an attention mask) and stacks the labels: class ids, or
    multi-hot rows with ``multi_label``. transformers pools the last token that is not the pad token."""

    pad_token_id: int
    multi_label: bool = False

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), longest), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(features), longest), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[i, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            attention[i, :n] = 1
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention}
        if features and "labels" in features[0]:
            dtype = torch.float32 if self.multi_label else torch.long
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=dtype)
        return batch
