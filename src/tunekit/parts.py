"""The protocols every part implements, one per kind.

A part is a small class. It is constructed with its validated ``Options`` instance and
nothing else (never the whole run configuration), so it is easy to test on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from tunekit.errors import DataError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import torch
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

KINDS = ("strategy", "quantizer", "dataset_adapter", "objective", "metric", "reward", "model_alias")
"""Every kind of part, in the order they are listed by ``tunekit plugins``."""

KIND_PLURALS = {
    "strategy": "strategies",
    "quantizer": "quantizers",
    "dataset_adapter": "dataset adapters",
    "objective": "objectives",
    "metric": "metrics",
    "reward": "rewards",
    "model_alias": "model aliases",
}


# -- the values parts exchange ----------------------------------------------------------------------
@dataclass
class LoadedData:
    """What a dataset adapter returns: training rows and, when the source has them, eval rows."""

    train: Dataset
    eval: Dataset | None = None
    description: str = ""


@dataclass(frozen=True)
class ClassOutputs:
    """A classification head's scores on evaluation rows, next to the rows' reference labels.

    ``labels`` are the class names in id order (the model config's ``id2label``); ``logits`` has
    one list of ``len(labels)`` scores per row; ``references`` holds each row's label ids (one
    id per row, or any number with ``multi_label``). A row's predicted classes are the argmax
    (single-label) or every class with a positive logit, i.e. a sigmoid above 0.5 (multi-label).

    >>> ClassOutputs(["neg", "pos"], [[0.1, 2.0], [1.0, -1.0]], [[1], [1]]).predicted()
    [[1], [0]]
    """

    labels: list[str]
    logits: list[list[float]]
    references: list[list[int]]
    multi_label: bool = False

    def predicted(self) -> list[list[int]]:
        """The predicted class ids of every row."""
        if self.multi_label:
            return [[j for j, value in enumerate(row) if value > 0] for row in self.logits]
        return [[max(range(len(row)), key=row.__getitem__)] if row else [] for row in self.logits]


@dataclass(frozen=True)
class PairScores:
    """A model's scores of the two answers of preference pairs (``prompt``/``chosen``/``rejected`` rows).

    ``chosen[i]`` and ``rejected[i]`` are pair i's scores: the summed log-probability of each answer
    under a language model, or a reward model's reward. ``accuracy()`` is the share of pairs that
    score the chosen answer higher (a tie counts half).

    >>> PairScores([-1.0, -5.0], [-2.0, -3.0]).accuracy()
    0.5
    """

    chosen: list[float]
    rejected: list[float]

    def accuracy(self) -> float:
        """The share of pairs whose chosen answer scores higher (``nan`` without pairs)."""
        if not self.chosen:
            return float("nan")
        won = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(self.chosen, self.rejected, strict=True))
        return won / len(self.chosen)

    def margin(self) -> float:
        """The mean of chosen minus rejected score (``nan`` without pairs)."""
        if not self.chosen:
            return float("nan")
        return sum(c - r for c, r in zip(self.chosen, self.rejected, strict=True)) / len(self.chosen)

    def headline(self) -> dict[str, float]:
        """What an evaluation during training logs beside the loss."""
        return {"preference_accuracy": self.accuracy(), "preference_margin": self.margin()}


@dataclass(frozen=True)
class TrainerPlan:
    """The trainer an objective trains with instead of tunekit's cross-entropy one (``Objective.trainer``).

    ``trainer`` is a ``transformers.Trainer`` subclass (trl's ``DPOTrainer``, ``GRPOTrainer``...) and
    ``arguments`` its ``TrainingArguments`` subclass (``DPOConfig``...). tunekit builds the arguments from
    ``training.*`` plus ``settings`` (the objective's own: ``beta``, ``loss_type``...), mixes its staged
    checkpoints and evaluation into the trainer class, and passes ``trainer_kwargs`` (``reward_funcs``...)
    to it. ``logged`` names the trainer's log keys a run records beside the loss (``rewards/margins``...);
    ``overrides`` replace arguments tunekit would set (say why next to them).
    """

    trainer: type[Any]
    arguments: type[Any]
    settings: dict[str, Any]
    trainer_kwargs: dict[str, Any]
    logged: tuple[str, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    """Arguments tunekit sets that this trainer needs otherwise (e.g. GRPO counts its own tokens)."""


@dataclass(frozen=True)
class MetricInputs:
    """What a metric is computed from.

    ``loss`` is the mean cross-entropy per trained token (``nan`` without trained tokens; for
    classification rows, the mean loss per row). ``predictions`` and ``references`` are the
    generated and the reference answers, row by row; they are ``None`` unless some requested
    metric ``needs`` generation. ``classes`` holds a classification head's logits and the reference
    labels (rows of the ``classify`` objective), else ``None``.
    """

    loss: float
    tokens: int
    rows: int
    predictions: list[str] | None = None
    references: list[str] | None = None
    classes: ClassOutputs | None = None
    preferences: PairScores | None = None

    def pairs(self, metric: str) -> list[tuple[str, str]]:
        """``(prediction, reference)`` per row, or a ``DataError`` when nothing was generated."""
        if self.predictions is None or self.references is None:
            raise DataError(f"metric {metric!r} needs generated answers, but none were produced.")
        return list(zip(self.predictions, self.references, strict=True))

    def class_outputs(self, metric: str) -> ClassOutputs:
        """The classification head's outputs, or a ``DataError`` when the rows were not classified."""
        if self.classes is None:
            raise DataError(
                f"metric {metric!r} is computed from a classification head's logits; evaluate a run with "
                "objective='classify' on rows with 'text' and 'label' columns."
            )
        return self.classes

    def pair_scores(self, metric: str) -> PairScores:
        """The preference pairs' scores, or a ``DataError`` when the rows were not preference pairs."""
        if self.preferences is None:
            raise DataError(
                f"metric {metric!r} compares the scores of each pair's chosen and rejected answers; evaluate rows "
                "with 'prompt', 'chosen' and 'rejected' columns."
            )
        return self.preferences


class PartOptions(BaseModel):
    """Base for a part's options: unknown keys are errors, and values are re-validated on change."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NoOptions(PartOptions):
    """For parts that take no options."""


@runtime_checkable
class Part(Protocol):
    """What every part has, whatever its kind."""

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[BaseModel]]


class Strategy(Part, Protocol):
    """Decides which parameters train, and how; owns the format what it trained is saved in.

    ``default_learning_rate`` is used when the user gives none: adapters and full
    fine-tuning want rates an order of magnitude apart. ``check_quantizer`` refuses a
    quantized base when the strategy would update quantized weights.

    ``save`` returns the name of the format it wrote (recorded in ``tunekit.json``).
    ``"full"`` (:data:`tunekit.formats.STANDALONE`) means a complete transformers model
    directory: ``Tuner.load`` loads it as the base, then calls ``prepare``. Any other format is
    restored by ``load`` onto a freshly loaded original base. Most strategies delegate all three
    to one of the shared formats in :mod:`tunekit.formats` (``PEFT_ADAPTER``, ``MODEL_DIRECTORY``).

    Strategies written for plugin API 1 before ``save``/``load``/``merge`` existed
    (``uses_adapters`` and ``prepare(model, *, quantized)``) still work: see
    :func:`tunekit.formats.as_strategy`.
    """

    default_learning_rate: ClassVar[float]
    uses_adapters: ClassVar[bool]
    """True when the base weights stay frozen and new (adapter) weights train beside them, so the
    base may be loaded in the compute dtype; False when the model's own weights train (fp32)."""
    trains_tied_weights: ClassVar[bool]
    """True when training both halves of a tied weight pair together is intended (full fine-tuning):
    pre-flight then reports tied trainable weights as information, not as a warning."""

    def __init__(self, options: Any) -> None: ...

    def check_quantizer(self, quantizer: Quantizer) -> str | None:
        """Return why this strategy cannot train on a base loaded by ``quantizer``, or None."""

    def prepare(self, model: PreTrainedModel) -> torch.nn.Module:
        """Freeze / wrap ``model`` for training and return the module to train."""

    def save(self, model: torch.nn.Module, directory: Path) -> str:
        """Write what was tuned in ``model`` (the module ``prepare`` or ``load`` returned) into the
        existing, empty ``directory``; return the format's name (``"full"`` for a standalone model
        directory). Write the model's weights through ``model.save_pretrained`` or
        ``model.state_dict()`` (the sharded-training path substitutes a gathered state dict there)."""

    def load(self, base_model: PreTrainedModel, directory: Path) -> torch.nn.Module:
        """Restore a save of this strategy (one whose format is not ``"full"``) onto a freshly loaded
        base, and return the module to train, as ``prepare`` would: training may continue from it."""

    def merge(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> torch.nn.Module:
        """Return a plain transformers model with what was tuned folded in, so that one
        ``save_pretrained`` writes a standalone model that reproduces the tuned one (a verified merge
        for adapters; ``model`` unchanged when the model's own weights trained)."""


class Quantizer(Part, Protocol):
    """Decides how the frozen base model is loaded."""

    quantizes_base: ClassVar[bool]

    def __init__(self, options: Any) -> None: ...

    def load_kwargs(self, compute_dtype: torch.dtype) -> dict[str, Any]:
        """Extra keyword arguments for ``AutoModelForCausalLM.from_pretrained``."""

    def prepare_for_training(
        self, model: PreTrainedModel, *, gradient_checkpointing: bool
    ) -> PreTrainedModel:
        """Make a freshly loaded base ready for training (k-bit preparation, ...)."""


class DatasetAdapter(Part, Protocol):
    """Turns a data source given by the user into rows (a ``LoadedData``)."""

    def __init__(self, options: Any) -> None: ...

    def can_load(self, source: Any) -> bool:
        """Whether this adapter understands ``source``; the first that does is used."""

    def load(self, source: Any) -> LoadedData:
        """Load ``source`` into train (and optionally eval) rows."""


class Objective(Part, Protocol):
    """Turns rows into ``input_ids`` and ``labels`` (-100 where no loss is taken).

    Optional members, for objectives that train something other than next tokens (the built-in
    ``classify`` uses all of them; an objective without them is a causal-LM objective):

    - ``task`` (default ``"causal-lm"``): the kind of model the base is loaded as,
      ``"sequence-classification"`` for transformers' ``AutoModelForSequenceClassification``.
      Strategies read it from the model they are given (peft's task type, the head to train).
    - ``model_kwargs() -> dict``: extra ``from_pretrained`` arguments (``num_labels``, ``id2label``...).
    - ``options_from_rows(rows, *, training) -> dict``: the objective's options completed from the
      rows (e.g. the label set read from the training data), called before the model is loaded;
      the result is saved in the run's config, so a reload builds the same model.
    - ``evaluate_rows(model, tokenized, *, batch_size, pad_token_id) -> (loss, scores)``: score tokenized
      rows without generation: the loss, and what the metrics read (a :class:`ClassOutputs` of a
      classification head, the :class:`PairScores` of preference pairs).
    - ``predict(model, tokenizer, texts) -> list``: what ``Tuner.predict`` returns.
    - ``rows_help`` (a string): what rows the objective trains on, added to the error for rows it does not accept.
    - ``trainer(model, tokenizer) -> TrainerPlan``: train with another trainer (trl's DPO, KTO, GRPO, reward
      trainers) instead of tunekit's cross-entropy one; see :class:`TrainerPlan`.
    """

    def __init__(self, options: Any) -> None: ...

    def accepts(self, row_format: str) -> bool:
        """Whether rows of this format (``text``, ``prompt_completion``, ``chat``) can be used."""

    def tokenize(
        self, rows: Dataset, tokenizer: PreTrainedTokenizerBase, *, max_length: int
    ) -> Dataset:
        """Return a dataset with ``input_ids`` and ``labels`` columns (lists of ints)."""

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        """The data collator that batches this objective's tokenized rows for training.

        An objective that does not define it gets :class:`tunekit.data.collate.PadPerBatch`
        (``input_ids`` padded with the pad token, ``labels`` with -100, per batch); see
        :func:`tunekit.data.collate.collator_for`.
        """

    def loss(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        """The training loss of one batch (optional): the mean over the batch's items, or the sum
        divided by ``num_items_in_batch`` (the items of the whole accumulated batch) when it is given.

        An objective that does not define it is trained on tunekit's cross-entropy over the
        ``labels`` (:func:`tunekit.training.loss.trained_logits_loss`, or the model's own loss).
        """


class Metric(Part, Protocol):
    """Scores a model on evaluation rows; ``Tuner.evaluate(data, metrics=[name, ...])`` asks for it.

    ``needs`` says what the evaluator must compute for it: ``"loss"`` (the token-weighted
    loss of the rows), ``"generation"`` (the model's greedy answer to each ``sft`` row,
    next to the row's reference answer), ``"pairs"`` (the scores of preference pairs' chosen and rejected
    answers, in ``MetricInputs.preferences``) or ``"logits"`` (a classification head's scores on
    ``classify`` rows, in ``MetricInputs.classes``; computed for any classification rows, so a
    label metric such as ``accuracy`` reads them there instead of generating).
    ``higher_is_better`` tells reports which way is up. An optional ``report(inputs) -> dict``
    returns structured values beside the number (per-class figures, a confusion matrix): they
    land in ``EvalResult.reports`` under the metric's name.
    """

    needs: ClassVar[str]
    higher_is_better: ClassVar[bool]

    def __init__(self, options: Any) -> None: ...

    def compute(self, inputs: MetricInputs) -> float:
        """The metric's value (``nan`` when it is undefined, e.g. on zero rows)."""


class Reward(Part, Protocol):
    """Scores completions (GRPO's reward functions): one float per completion, higher is better.

    ``score`` gets a batch of completions the model generated, each beside the prompt it answered
    and the row's reference answer. A reward that compares with a reference and is given ``None``
    (a row without one) must raise :class:`tunekit.errors.DataError` naming the reward and saying
    where references come from: the row's ``completion`` column (prompt/completion rows) or its
    ``reference`` column. A reward that needs no reference ignores ``references``.
    """

    def __init__(self, options: Any) -> None: ...

    def score(self, completions: list[str], *, prompts: list[str], references: list[str | None]) -> list[float]:
        """One reward per completion. ``prompts[i]`` is the text completion i answered (rendered prompt),
        ``references[i]`` the row's reference answer, or None where the row has none."""


class ModelAlias(Part, Protocol):
    """A short model name (``Tuner(model="smollm2-135m")``) that stands for a real source."""

    def __init__(self, options: Any) -> None: ...

    def resolve(self) -> str:
        """What the alias stands for: a hub id, a local model directory or a ``.gguf`` file.

        Raise :class:`tunekit.errors.MissingDependencyError` (naming the install command)
        when what it needs is not installed.
        """
