"""From whatever the user passed to tokenized train and eval rows."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunekit.data.rows import normalise_rows, split_sizes
from tunekit.errors import ConfigError, DataError, Problem, TunekitError, join_names

if TYPE_CHECKING:
    from datasets import Dataset

    from tunekit.config import DataOptions
    from tunekit.data.rows import LoadedData

log = logging.getLogger(__name__)

@dataclass
class PreparedRows:
    """Rows in a canonical format (``text``, ``prompt_completion``, ``chat``, ``classification``, ``preference``
    or ``prompt``: see :mod:`tunekit.data.rows`)."""

    format: str
    train: Dataset
    """A ``datasets.Dataset``, or an ``IterableDataset`` for a stream."""
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


def is_stream(rows: Any) -> bool:
    """Whether ``rows`` is a ``datasets.IterableDataset`` (a stream: no length, read as it is consumed)."""
    return type(rows).__name__ == "IterableDataset" and type(rows).__module__.startswith("datasets")


def head(rows: Any, count: int) -> Dataset:
    """The first ``count`` rows as a ``datasets.Dataset``, of a dataset or a stream (read that far only)."""
    if not is_stream(rows):
        return rows.select(range(min(len(rows), count)))
    from datasets import Dataset

    return Dataset.from_list(list(rows.take(count)))


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
    train = getattr(loaded, "train", None)
    if not hasattr(train, "column_names"):
        name = getattr(adapter, "name", type(adapter).__name__)
        raise DataError(
            f"the dataset adapter {name!r} did not turn the {where} data (a {type(source).__name__}) into "
            "a datasets.Dataset; give it data it reads, or leave data.adapter unset to pick one that fits."
        )
    if not is_stream(train) and len(train) == 0:  # type: ignore[arg-type]
        raise DataError(f"the {where} data is empty: give at least one row.")
    return loaded  # type: ignore[no-any-return]


def prepare_rows(train: Any, eval: Any, options: DataOptions, *, seed: int, wrap_prompts: bool = False) -> PreparedRows:
    """Load, split and normalise the training (and eval) data; eval rows must share the train format.

    ``wrap_prompts``: prompt/completion rows become chat rows (a user and an assistant turn, and the
    row's ``system`` message), so they are rendered with the chat template as at inference.
    A stream (``IterableDataset``) is normalised lazily; evaluation needs rows with a length.
    """
    loaded = load_rows(train, options, where="training")
    fmt, train_rows = _normalise(loaded.train, options, "training data", wrap_prompts)
    eval_source = loaded.eval
    if eval is not None:
        eval_source = load_rows(eval, options, where="eval").train
    eval_rows = None
    if eval_source is not None:
        if is_stream(eval_source):
            raise DataError(
                "the eval data is a stream (an IterableDataset, or streaming: true): evaluation needs rows it can "
                "count. Give eval rows as a Dataset or a non-streaming source, e.g. {path: ..., split: 'validation[:500]'}."
            )
        eval_fmt, eval_rows = _normalise(eval_source, options, "eval data", wrap_prompts)
        if eval_fmt != fmt:
            raise DataError(f"the eval rows are in the {eval_fmt!r} format but the training rows in {fmt!r}; use one format.")
    elif options.eval_fraction:
        if is_stream(train_rows):
            raise ConfigError([Problem("data.eval_fraction", (
                "a stream has no length to hold a fraction of out; give eval data (data.eval or fit(eval=...)) instead"))])
        split_sizes(len(train_rows), options.eval_fraction)  # a DataError when a side would be empty
        split = train_rows.train_test_split(test_size=options.eval_fraction, seed=seed)
        train_rows, eval_rows = split["train"], split["test"]
    return PreparedRows(fmt, train_rows, eval_rows, loaded.description)


def _normalise(rows: Any, options: DataOptions, where: str, wrap_prompts: bool) -> tuple[str, Any]:
    if is_stream(rows):
        fmt, rows = normalise_stream(rows, options.columns, where=where)
    else:
        fmt, rows = normalise_rows(rows, options.columns, where=where)
    if fmt == "prompt_completion" and wrap_prompts:
        return "chat", wrap_as_chat(rows)
    if fmt in {"preference", "unpaired_preference", "prompt"} and wrap_prompts:  # the prompt is asked as a user turn, as at inference
        return fmt, rows.map(lambda r: {"prompt": [{"role": "user", "content": r["prompt"]}] if isinstance(r["prompt"], str) else r["prompt"]})
    if fmt == "prompt_completion" and "system" in (rows.column_names or []):
        log.warning(
            "%s has a 'system' column, which only a chat template can place; with data.chat_template='never' "
            "it is not trained on.", where,
        )
    return fmt, rows


def wrap_as_chat(rows: Any) -> Any:
    """Prompt/completion rows as chat rows: ``{"messages": [system?, user, assistant]}``."""
    from tunekit.data.chat import as_chat

    def one(row: dict[str, Any]) -> dict[str, Any]:
        return {"messages": as_chat(row["prompt"], row["completion"], row.get("system"))}

    columns = list(rows.column_names or [])
    if is_stream(rows):  # declared features keep the stream's column names known to the objectives
        return rows.map(one, remove_columns=columns, features=canonical_features("chat"))
    return rows.map(one, remove_columns=columns)


def canonical_features(fmt: str, system: bool = False) -> Any:
    """The ``datasets.Features`` of rows in a canonical format (a stream's map declares them)."""
    from datasets import Features, List, Value

    text = Value("string")
    if fmt == "chat":
        return Features({"messages": List({"role": text, "content": text})})
    if fmt == "prompt_completion":
        return Features({"prompt": text, "completion": text, **({"system": text} if system else {})})
    return Features({"text": text})


def normalise_stream(rows: Any, columns: Mapping[str, str] | None, *, where: str) -> tuple[str, Any]:
    """:func:`normalise_rows` for a stream: the format from its columns (the first row when the stream
    does not declare them), each row checked as it is read."""
    from tunekit.data.rows import check_renames, check_row, detect_format

    names = rows.column_names
    if names is None:
        first = next(iter(rows.take(1)), None)
        if first is None:
            raise DataError(f"{where} is an empty stream: give at least one row.")
        names = list(first)
    if columns:
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"data.columns renames {missing}, but {where} has only the columns {names}.")
        renames = check_renames(columns, names, where)
        if renames:
            rows = rows.rename_columns(renames)
            names = [renames.get(n, n) for n in names]
    fmt = detect_format(names)
    if fmt == "unpaired_preference":  # judged answers only if the label is true/false (the first row says)
        head_row = next(iter(rows.take(1)), None) or {}
        fmt = "unpaired_preference" if isinstance(head_row.get("label"), bool) else "prompt_completion"
    if fmt in {"preference", "unpaired_preference", "prompt"}:
        raise DataError(
            f"{where} is a stream of {fmt} rows; tunekit reads {fmt} rows as a dataset it can count. Load it without "
            "streaming (a datasets.Dataset, or streaming: false)."
        )
    keep = {
        "chat": ["messages"], "prompt_completion": ["prompt", "completion"] + (["system"] if "system" in names else []),
        "instruction": [n for n in ("instruction", "input", "output") if n in names], "text": ["text"],
        "classification": [n for n in ("text", "label", "text_pair") if n in names],
    }[fmt]
    rows = rows.select_columns(keep)

    def checked(row: dict[str, Any], index: int) -> dict[str, Any]:
        return check_row(fmt, row, f"{where} row {index}")

    canonical = "prompt_completion" if fmt == "instruction" else fmt
    # a label may be a string, a number or a list: a classification stream keeps the types it has
    features = None if fmt == "classification" else canonical_features(canonical, system="system" in keep)
    rows = rows.map(checked, with_indices=True, remove_columns=keep, features=features)
    return canonical, rows


def choose_objective(spec_name: str | None, row_format: str) -> str:
    """The objective for rows of ``row_format``: the configured one, or sft/causal-lm by format
    (``causal-lm`` for raw text and for text/label rows: a classification head is asked for by name,
    ``objective='classify'``, since it changes the model that is loaded)."""
    if spec_name is not None:
        return spec_name
    if row_format == "preference":
        return "dpo"
    if row_format == "unpaired_preference":
        return "kto"
    return "causal-lm" if row_format in {"text", "classification"} else "sft"


def build_objective(name: str, options: dict[str, Any], row_format: str) -> Any:
    from tunekit.plugins import get_registry

    reg = get_registry("objective").get(name, location="objective")
    objective = reg.cls(reg.options_model.model_validate(options))
    if not objective.accepts(row_format):
        hint = " Use objective='causal-lm' for raw text." if row_format == "text" else ""
        if getattr(objective, "rows_help", ""):  # what the objective itself says it trains on
            hint = f" {objective.rows_help}"
        if name == "classify":
            hint = (" It needs rows with a 'text' and a 'label' column (and optionally 'text_pair'); rename "
                    "other columns with data.columns, e.g. columns={'sentence': 'text', 'sentiment': 'label'}.")
        elif row_format == "classification":
            hint = " Text/label rows train a classification head with objective='classify', or raw text with 'causal-lm'."
        raise ConfigError([Problem("objective", f"{name!r} cannot train on {row_format!r} rows.{hint}")])
    return objective
