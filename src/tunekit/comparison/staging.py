"""Put the data where every candidate's process reads the identical rows: one file each for train and eval.

Python rows, DataFrames and ``datasets`` objects are loaded once (through the dataset
adapters, so bad data fails here, before any candidate starts) and written as JSONL into
the report directory. A data file given by path is used as it is. An ``eval_fraction``
split is made here, once, so every seed is evaluated on the same held-out rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

    from tunekit.config import DataOptions


@dataclass
class StagedData:
    """The files every candidate trains and evaluates on."""

    train: str
    eval: str | None
    train_rows: int | None
    eval_rows: int | None
    written: bool
    """Whether tunekit wrote the files (then children read them with the plain JSONL adapter)."""


def _is_path(source: Any) -> bool:
    return isinstance(source, (str, os.PathLike))


def _write_jsonl(rows: Dataset, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            count += 1
    return count


def _check(rows: Dataset, options: DataOptions, where: str) -> int:
    """Fail now, not once per candidate, when the rows fit no format; return how many there are."""
    from tunekit.data.rows import normalise_rows

    normalise_rows(rows, options.columns, where=where)
    return len(rows)


def stage_data(train: Any, eval: Any, options: DataOptions, *, seed: int, directory: Path) -> StagedData:
    """Write (or locate) the train and eval files for a comparison; see the module docstring."""
    from tunekit.data.pipeline import load_rows

    if train is None:
        raise DataError("compare() needs training data: pass train=..., or set data.train in the shared config.")
    for what, source in (("training", train), ("eval", eval)):
        if _is_path(source) and not Path(source).expanduser().is_file():
            raise DataError(f"{what} data file {str(source)!r} does not exist; check the path.")
    # Paths pass through unless a custom adapter must read them or a split has to be made.
    needs_split = eval is None and options.eval_fraction is not None
    passthrough = options.adapter is None and not needs_split
    if passthrough and _is_path(train) and (eval is None or _is_path(eval)):
        # Read once here too: a bad file fails now, not once per candidate, and the report can count rows.
        n_train = _check(load_rows(train, options, where="training").train, options, "training data")
        n_eval = _check(load_rows(eval, options, where="eval").train, options, "eval data") if eval is not None else None
        return StagedData(
            str(Path(train).expanduser().resolve()),
            str(Path(eval).expanduser().resolve()) if eval is not None else None,
            n_train, n_eval, written=False,
        )
    loaded = load_rows(train, options, where="training")
    train_rows, eval_rows = loaded.train, loaded.eval
    if eval is not None:
        eval_rows = load_rows(eval, options, where="eval").train
    elif eval_rows is None and options.eval_fraction is not None:
        if len(train_rows) < 2:
            raise DataError("data.eval_fraction needs at least 2 training rows to split.")
        split = train_rows.train_test_split(test_size=options.eval_fraction, seed=seed)
        train_rows, eval_rows = split["train"], split["test"]
    _check(train_rows, options, "training data")
    if eval_rows is not None:
        _check(eval_rows, options, "eval data")
    train_path, eval_path = directory / "train.jsonl", directory / "eval.jsonl"
    n_train = _write_jsonl(train_rows, train_path)
    n_eval = _write_jsonl(eval_rows, eval_path) if eval_rows is not None else None
    return StagedData(str(train_path.resolve()), str(eval_path.resolve()) if n_eval is not None else None, n_train, n_eval, written=True)
