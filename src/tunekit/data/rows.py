"""Row formats: detect which one a dataset uses, check its rows, and normalise its columns.

Recognised formats (after ``data.columns`` renames):

- ``text``: ``{"text"}`` raw text, for self-supervised training;
- ``prompt_completion``: ``{"prompt", "completion"}``;
- instruction rows ``{"instruction", "input" (optional), "output"}``, turned into prompt/completion;
- ``chat``: ``{"messages": [{"role", "content"}, ...]}``, rendered with the chat template.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunekit.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

CHAT_ROLES = ("system", "user", "assistant", "tool")
FORMATS_HELP = (
    "{'text'} for raw text; {'prompt', 'completion'}; {'instruction', 'input', 'output'}; "
    "or {'messages': [{'role', 'content'}, ...]} for chat"
)


@dataclass
class LoadedData:
    """What a dataset adapter returns: training rows and, when the source has them, eval rows."""

    train: Dataset
    eval: Dataset | None = None
    description: str = ""


def detect_format(columns: list[str]) -> str:
    """The row format of a dataset with these columns, or a ``DataError`` naming what it saw."""
    cols = set(columns)
    if "messages" in cols:
        return "chat"
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    if {"instruction", "output"} <= cols:
        return "instruction"
    if "text" in cols:
        return "text"
    raise DataError(
        f"the data's columns {sorted(cols)} fit no row format tunekit knows. Accepted: "
        f"{FORMATS_HELP}. Rename columns with data.columns, e.g. "
        "columns={'question': 'prompt', 'answer': 'completion'}."
    )


def instruction_prompt(instruction: str, input_text: str | None) -> str:
    """The prompt an instruction row is rendered as (and that ``generate`` should be given)."""
    if input_text:
        return f"{instruction}\n\n{input_text}\n\n"
    return f"{instruction}\n\n"


def normalise_rows(rows: Dataset, columns: Mapping[str, str] | None = None, *, where: str = "data") -> tuple[str, Dataset]:
    """Rename columns, detect the format, check every row, and keep only the canonical columns.

    Returns ``(format, dataset)`` where format is ``text``, ``prompt_completion`` or ``chat``.
    """
    if len(rows) == 0:
        raise DataError(f"{where} is empty: give at least one row.")
    if columns:
        missing = [c for c in columns if c not in rows.column_names]
        if missing:
            raise DataError(
                f"data.columns renames {missing}, but {where} has only the columns {rows.column_names}."
            )
        rows = rows.rename_columns(dict(columns))
    fmt = detect_format(rows.column_names)
    if fmt == "chat":
        rows = rows.select_columns(["messages"])
        for i, row in enumerate(rows):
            _check_messages(row["messages"], f"{where} row {i}")
        return "chat", rows
    if fmt == "instruction":
        has_input = "input" in rows.column_names
        for i, row in enumerate(rows):
            for key in ("instruction", "output") + (("input",) if has_input else ()):
                if key == "input" and row[key] is None:
                    continue
                _check_str(row[key], f"{where} row {i}, column {key!r}")
        rows = rows.map(
            lambda r: {
                "prompt": instruction_prompt(r["instruction"], r.get("input") if has_input else None),
                "completion": r["output"],
            },
            remove_columns=rows.column_names,
        )
        return "prompt_completion", rows
    keep = ["prompt", "completion"] if fmt == "prompt_completion" else ["text"]
    rows = rows.select_columns(keep)
    for i, row in enumerate(rows):
        for key in keep:
            _check_str(row[key], f"{where} row {i}, column {key!r}")
    return fmt, rows


def _check_str(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise DataError(f"{where} must be a string, got {type(value).__name__} ({value!r:.60}).")


def _check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} mappings.")
    for j, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise DataError(f"{where}, message {j}: must be a mapping with 'role' and 'content'.")
        if message["role"] not in CHAT_ROLES:
            raise DataError(
                f"{where}, message {j}: unknown role {message['role']!r}; use one of {', '.join(CHAT_ROLES)}."
            )
        _check_str(message["content"], f"{where}, message {j}, 'content'")
