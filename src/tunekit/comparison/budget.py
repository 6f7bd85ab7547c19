"""The shared training budget: optimizer steps, epochs, or a number of training tokens.

>>> parse_budget(50)
{'max_steps': 50}
>>> parse_budget({"tokens": 100_000})
{'tokens': 100000}

A token budget becomes a number of steps before any candidate starts: the mean number of
(non-padding) tokens per training row, times the rows per optimizer step, gives the tokens
per step. Candidates with the same tokenizer and batch size get the same steps, so they see
the same batches; each row of the report says how many tokens it actually saw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tunekit.errors import ConfigError, Problem

if TYPE_CHECKING:
    from tunekit.config import TuneConfig

BUDGET_KINDS = ("max_steps", "tokens", "epochs")


def parse_budget(budget: Any) -> dict[str, int | float]:
    """Validate a budget: ``None``, an int (steps), or a mapping with exactly one of max_steps/tokens/epochs."""
    if budget is None:
        return {}
    if isinstance(budget, bool):
        raise ConfigError([Problem("budget", "must be a number of steps or a mapping such as {'max_steps': 50}")])
    if isinstance(budget, int):
        budget = {"max_steps": budget}
    if not isinstance(budget, Mapping):
        raise ConfigError([Problem("budget", f"must be a number of steps or a mapping such as {{'max_steps': 50}}, got {type(budget).__name__}")])
    budget = {"tokens" if k == "max_tokens" else k: v for k, v in budget.items()}
    unknown = [k for k in budget if k not in BUDGET_KINDS]
    if unknown:
        raise ConfigError([Problem(f"budget.{unknown[0]}", f"unknown budget; use one of {', '.join(BUDGET_KINDS)}")])
    if len(budget) != 1:
        raise ConfigError([Problem("budget", f"give exactly one of {', '.join(BUDGET_KINDS)}, got {sorted(budget)}")])
    ((kind, value),) = budget.items()
    integer = kind != "epochs"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and int(value) != value) or value <= 0:
        what = "a positive integer" if integer else "a positive number"
        raise ConfigError([Problem(f"budget.{kind}", f"must be {what} (got {value!r})")])
    return {kind: int(value) if integer else float(value)}


def tokens_per_row(config: TuneConfig, train_path: str) -> float:
    """Mean non-padding tokens per tokenized training row, as ``fit`` would tokenize them."""
    from tunekit.data.preparation import complete_objective, load_data, tokenize_data
    from tunekit.models.loading import load_configured_tokenizer

    # The path fit takes (data.preparation), with the tokenizer set up as the Tuner sets it up.
    tokenizer = load_configured_tokenizer(config)
    rows = load_data(config, train_path, split_eval=False, tokenizer=tokenizer)
    config = complete_objective(config, rows, training=True)  # classify: the labels, read from the rows
    tokenized = tokenize_data(config, rows, tokenizer).train
    lengths = tokenized["length"] if "length" in tokenized.column_names else [len(ids) for ids in tokenized["input_ids"]]
    if not lengths:
        raise ConfigError([Problem("budget.tokens", "no training rows are left after tokenization")])
    return sum(lengths) / len(lengths)


def steps_for_tokens(tokens: int, *, mean_tokens_per_row: float, batch_size: int, gradient_accumulation: int) -> int:
    """The optimizer steps that feed about ``tokens`` training tokens (at least one step).

    >>> steps_for_tokens(1000, mean_tokens_per_row=12.5, batch_size=8, gradient_accumulation=1)
    10
    """
    per_step = mean_tokens_per_row * batch_size * gradient_accumulation
    return max(1, math.ceil(tokens / per_step - 1e-9))
