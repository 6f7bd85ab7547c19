"""From whatever the user passed to tokenized train and eval rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunekit.data.rows import normalise_rows, split_sizes
from tunekit.errors import ConfigError, DataError, Problem, TunekitError, join_names

if TYPE_CHECKING:
    from datasets import Dataset

    from tunekit.config import DataOptions
    from tunekit.data.rows import LoadedData


@dataclass
class PreparedRows:
    """Rows in a canonical format (``text``, ``prompt_completion`` or ``chat``)."""

    format: str
    train: Dataset
    eval: Dataset | None
    description: str


def _adapter(options: DataOptions, source: Any) -> Any:
    from tunekit.plugins import BUILTIN_PLUGIN, get_registry

    registry = get_registry("dataset_adapter")
    if options.adapter is not None:
        reg = registry.get(options.adapter.name, location="data.adapter")
        return reg.cls(reg.options_model.model_validate(options.adapter.options))
    # Plugins' adapters are asked first: the built-ins are catch-alls (any list, any path).
    for reg in sorted(registry, key=lambda r: r.plugin == BUILTIN_PLUGIN):
        adapter = reg.cls(reg.options_model())
        if adapter.can_load(source):
            return adapter
    raise DataError(
        f"no dataset adapter understands a {type(source).__name__}. Give a list of dicts, a "
        "datasets.Dataset/DatasetDict, a pandas DataFrame or a path to a .jsonl/.json/.csv/"
        f".parquet/.txt file. Installed adapters: {join_names(registry.names())}."
    )


def load_rows(source: Any, options: DataOptions, *, where: str) -> LoadedData:
    """Load ``source`` with the configured (or first fitting) dataset adapter."""
    if source is None:
        raise DataError(f"no {where} data was given.")
    adapter = _adapter(options, source)
    try:
        loaded = adapter.load(source)
    except TunekitError:
        raise
    except Exception as exc:  # e.g. data.adapter names an adapter that was never meant for this data
        name = getattr(adapter, "name", type(adapter).__name__)
        chosen = "data.adapter" if options.adapter is not None else "the dataset adapter"
        raise DataError(
            f"{chosen} {name!r} could not load the {where} data, a {type(source).__name__} "
            f"({type(exc).__name__}: {str(exc)[:200]}). Give it data it reads, or leave data.adapter unset "
            "to pick an adapter that fits."
        ) from exc
    if not hasattr(getattr(loaded, "train", None), "column_names"):
        name = getattr(adapter, "name", type(adapter).__name__)
        raise DataError(
            f"the dataset adapter {name!r} did not turn the {where} data (a {type(source).__name__}) into "
            "a datasets.Dataset; give it data it reads, or leave data.adapter unset to pick one that fits."
        )
    if len(loaded.train) == 0:
        raise DataError(f"the {where} data is empty: give at least one row.")
    return loaded  # type: ignore[no-any-return]


def prepare_rows(train: Any, eval: Any, options: DataOptions, *, seed: int) -> PreparedRows:
    """Load, split and normalise the training (and eval) data; eval rows must share the train format."""
    loaded = load_rows(train, options, where="training")
    fmt, train_rows = normalise_rows(loaded.train, options.columns, where="training data")
    eval_source = loaded.eval
    if eval is not None:
        eval_source = load_rows(eval, options, where="eval").train
    eval_rows = None
    if eval_source is not None:
        eval_fmt, eval_rows = normalise_rows(eval_source, options.columns, where="eval data")
        if eval_fmt != fmt:
            raise DataError(f"the eval rows are in the {eval_fmt!r} format but the training rows in {fmt!r}; use one format.")
    elif options.eval_fraction:
        split_sizes(len(train_rows), options.eval_fraction)  # a DataError when a side would be empty
        split = train_rows.train_test_split(test_size=options.eval_fraction, seed=seed)
        train_rows, eval_rows = split["train"], split["test"]
    return PreparedRows(fmt, train_rows, eval_rows, loaded.description)


def choose_objective(spec_name: str | None, row_format: str) -> str:
    """The objective for rows of ``row_format``: the configured one, or sft/causal-lm by format."""
    if spec_name is not None:
        return spec_name
    return "causal-lm" if row_format == "text" else "sft"


def build_objective(name: str, options: dict[str, Any], row_format: str) -> Any:
    from tunekit.plugins import get_registry

    reg = get_registry("objective").get(name, location="objective")
    objective = reg.cls(reg.options_model.model_validate(options))
    if not objective.accepts(row_format):
        hint = " Use objective='causal-lm' for raw text." if row_format == "text" else ""
        raise ConfigError([Problem("objective", f"{name!r} cannot train on {row_format!r} rows.{hint}")])
    return objective
