"""The protocols every part implements, one per kind.

A part is a small class. It is constructed with its validated ``Options`` instance and
nothing else (never the whole run configuration), so it is easy to test on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tunekit.data.rows import LoadedData
    from tunekit.evaluation import MetricInputs

KINDS = ("strategy", "quantizer", "dataset_adapter", "objective", "metric", "model_alias")
"""Every kind of part, in the order they are listed by ``tunekit plugins``."""

KIND_PLURALS = {
    "strategy": "strategies",
    "quantizer": "quantizers",
    "dataset_adapter": "dataset adapters",
    "objective": "objectives",
    "metric": "metrics",
    "model_alias": "model aliases",
}


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
    """Decides which parameters train, and how.

    ``default_learning_rate`` is used when the user gives none: adapters and full
    fine-tuning want rates an order of magnitude apart. ``check_quantizer`` refuses a
    quantized base when the strategy would update quantized weights.
    """

    default_learning_rate: ClassVar[float]
    uses_adapters: ClassVar[bool]
    """True when the strategy trains adapters (saved as a peft adapter); False saves a full model."""

    def __init__(self, options: Any) -> None: ...

    def check_quantizer(self, quantizer: Quantizer) -> str | None:
        """Return why this strategy cannot train on a base loaded by ``quantizer``, or None."""

    def prepare(self, model: PreTrainedModel, *, quantized: bool) -> torch.nn.Module:
        """Freeze / wrap ``model`` for training and return the module to train."""



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
    """Turns rows into ``input_ids`` and ``labels`` (-100 where no loss is taken)."""

    def __init__(self, options: Any) -> None: ...

    def accepts(self, row_format: str) -> bool:
        """Whether rows of this format (``text``, ``prompt_completion``, ``chat``) can be used."""

    def tokenize(
        self, rows: Dataset, tokenizer: PreTrainedTokenizerBase, *, max_length: int
    ) -> Dataset:
        """Return a dataset with ``input_ids`` and ``labels`` columns (lists of ints)."""


class Metric(Part, Protocol):
    """Scores a model on evaluation rows; ``Tuner.evaluate(data, metrics=[name, ...])`` asks for it.

    ``needs`` says what the evaluator must compute for it: ``"loss"`` (the token-weighted
    loss of the rows) or ``"generation"`` (the model's greedy answer to each ``sft`` row,
    next to the row's reference answer). ``higher_is_better`` tells reports which way is up.
    """

    needs: ClassVar[str]
    higher_is_better: ClassVar[bool]

    def __init__(self, options: Any) -> None: ...

    def compute(self, inputs: MetricInputs) -> float:
        """The metric's value (``nan`` when it is undefined, e.g. on zero rows)."""


class ModelAlias(Part, Protocol):
    """A short model name (``Tuner(model="smollm2-135m")``) that stands for a real source."""

    def __init__(self, options: Any) -> None: ...

    def resolve(self) -> str:
        """What the alias stands for: a hub id, a local model directory or a ``.gguf`` file.

        Raise :class:`tunekit.errors.MissingDependencyError` (naming the install command)
        when what it needs is not installed.
        """
