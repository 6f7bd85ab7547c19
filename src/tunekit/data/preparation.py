"""From what the user passed to the tokenized rows a run trains and evaluates on.

One path for ``Tuner.fit``, ``Tuner.evaluate``, ``Tuner.preflight`` and ``compare``'s token
budget: rows are loaded and normalised by :mod:`tunekit.data.pipeline`, the objective is chosen
for their format, and the objective tokenizes them (through a :class:`TokenizationCache`, so
fit, evaluate and preflight on the same rows tokenize them once).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunekit.data.pipeline import PreparedRows, build_objective, choose_objective, prepare_rows

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

    from tunekit.config import TuneConfig


@dataclass
class PreparedData:
    """Rows in their canonical format, the objective chosen for them, and its tokenized rows."""

    objective_name: str
    objective: Any
    rows: PreparedRows
    train: Dataset
    eval: Dataset | None

    @property
    def format(self) -> str:
        return self.rows.format


def choose(config: TuneConfig, row_format: str) -> tuple[str, Any]:
    """The objective (name and part) a config trains rows of ``row_format`` with."""
    spec = config.objective
    name = choose_objective(spec.name if spec else None, row_format)
    return name, build_objective(name, spec.options if spec else {}, row_format)


class TokenizationCache:
    """``objective.tokenize(rows)``, once for the same rows and settings.

    The key is the rows' content fingerprint (datasets hashes in-memory rows too), the
    objective and its options, max_length and the tokenizer's vocabulary, chat template and
    special tokens. The ``size`` most recent results are kept. Rows without a fingerprint (not
    a ``datasets.Dataset``) are tokenized every time.
    """

    def __init__(self, size: int = 4):
        self.size = size
        self._results: dict[tuple[Any, ...], Any] = {}

    def tokenize(
        self, config: TuneConfig, name: str, objective: Any, row_format: str, rows: Dataset, tokenizer: PreTrainedTokenizerBase
    ) -> Dataset:
        max_length = config.training.max_length
        fingerprint = getattr(rows, "_fingerprint", None)
        if fingerprint is None:
            return objective.tokenize(rows, tokenizer, max_length=max_length)
        options = json.dumps(config.objective.options if config.objective else {}, sort_keys=True, default=str)
        tok = tokenizer
        key = (name, options, row_format, max_length, fingerprint, len(tok), tok.chat_template, tok.eos_token_id, tok.pad_token_id)
        if key not in self._results:
            while len(self._results) >= self.size:
                del self._results[next(iter(self._results))]
            self._results[key] = objective.tokenize(rows, tokenizer, max_length=max_length)
        return self._results[key]


def learns_from_rows(config: TuneConfig) -> bool:
    """Whether the configured objective completes its options from the rows (``options_from_rows``,
    e.g. ``classify`` reads its labels), which must happen before the model is loaded."""
    if config.objective is None:
        return False
    from tunekit.config import build_part

    return callable(getattr(build_part("objective", config.objective, "objective"), "options_from_rows", None))


def complete_objective(config: TuneConfig, rows: PreparedRows, *, training: bool) -> TuneConfig:
    """The config with the objective's options completed from the rows (``options_from_rows``): from the
    training rows when ``training``; otherwise (evaluating a model not trained yet) only what is missing."""
    from tunekit.config import PartSpec

    spec = config.objective
    if spec is None:
        return config
    _, objective = choose(config, rows.format)
    learn = getattr(objective, "options_from_rows", None)
    if not callable(learn):
        return config
    if not training and all(spec.options.get(k) is not None for k in getattr(objective, "learned_options", ())):
        return config  # a trained (or fully configured) objective: its options stay as they are
    options = learn(rows.train, training=training)
    if options == spec.options:
        return config
    return config.model_copy(update={"objective": PartSpec(name=spec.name, options=options)})


def load_data(
    config: TuneConfig, train: Any, eval: Any = None, *, split_eval: bool = True, tokenizer: PreTrainedTokenizerBase | None = None
) -> PreparedRows:
    """Load and normalise rows as the config says; ``split_eval=False`` ignores ``data.eval_fraction``.

    With the run's ``tokenizer``, prompt/completion rows are wrapped as chat turns where
    ``data.chat_template`` says so (see :func:`tunekit.data.chat.wraps_prompts`).
    """
    from tunekit.data.chat import wraps_prompts

    options = config.data if split_eval else config.data.model_copy(update={"eval_fraction": None})
    wrap = tokenizer is not None and wraps_prompts(config.data.chat_template, tokenizer)
    return prepare_rows(train, eval, options, seed=config.training.seed, wrap_prompts=wrap)


def tokenize_data(
    config: TuneConfig, rows: PreparedRows, tokenizer: PreTrainedTokenizerBase, cache: TokenizationCache | None = None
) -> PreparedData:
    """Choose the objective for the rows' format and tokenize the train (and eval) rows with it."""
    cache = cache if cache is not None else TokenizationCache(size=2)
    name, objective = choose(config, rows.format)
    train = cache.tokenize(config, name, objective, rows.format, rows.train, tokenizer)
    evals = cache.tokenize(config, name, objective, rows.format, rows.eval, tokenizer) if rows.eval is not None else None
    return PreparedData(name, objective, rows, train, evals)
