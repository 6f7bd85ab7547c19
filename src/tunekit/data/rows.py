"""Row formats: detect which one a dataset uses, check its rows, and normalise its columns.

Recognised formats (after ``data.columns`` renames):

- ``text``: ``{"text"}`` raw text, for self-supervised training;
- ``prompt_completion``: ``{"prompt", "completion"}``;
- instruction rows ``{"instruction", "input" (optional), "output"}``, turned into prompt/completion;
- ``chat``: ``{"messages": [{"role", "content"}, ...]}``, rendered with the chat template;
- ``classification``: ``{"text", "label"}`` and optionally ``"text_pair"``, for the ``classify``
  objective (``causal-lm`` trains on their text alone, as on ``text`` rows);
- ``preference``: ``{"prompt", "chosen", "rejected"}``, two answers to one prompt, the better one
  first (``dpo``, ``reward-model``). The prompt is a text or a list of chat messages; the answers are
  texts or one assistant message each. Chat pairs may also give ``chosen`` and ``rejected`` as two
  whole conversations that share their history and differ in the last assistant turn.
- ``unpaired_preference``: ``{"prompt", "completion", "label"}`` with a boolean label in every row, one
  answer judged good (true) or bad (false) (``kto``); with any other label the rows are prompt/completion
  rows (the label column is dropped);
- ``prompt``: ``{"prompt"}`` and optionally ``"reference"``, prompts to answer (``grpo``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tunekit.errors import DataError
from tunekit.parts import LoadedData  # noqa: F401  (re-exported for plugins written against tunekit.data.rows)

if TYPE_CHECKING:
    from datasets import Dataset

CHAT_ROLES = ("system", "user", "assistant", "tool")
FORMATS_HELP = (
    "{'text'} for raw text; {'text', 'label'} (and optionally 'text_pair') for classification; "
    "{'prompt', 'completion'}; {'instruction', 'input', 'output'}; "
    "{'messages': [{'role', 'content'}, ...]} for chat; {'prompt', 'chosen', 'rejected'} for preference pairs; "
    "{'prompt', 'completion', 'label'} (label true or false) for judged answers; "
    "or {'prompt'} (and optionally 'reference') for prompts to answer"
)


def detect_format(columns: list[str]) -> str:
    """The row format of a dataset with these columns, or a ``DataError`` naming what it saw."""
    cols = set(columns)
    if "messages" in cols:
        return "chat"
    if {"chosen", "rejected"} <= cols:
        return "preference"
    if {"prompt", "completion", "label"} <= cols:
        return "unpaired_preference"
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    if {"instruction", "output"} <= cols:
        return "instruction"
    if {"text", "label"} <= cols:
        return "classification"
    if "text" in cols:
        return "text"
    if "prompt" in cols:
        return "prompt"
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

    Returns ``(format, dataset)`` where format is ``text``, ``prompt_completion``, ``chat``,
    ``classification`` (whose labels the objective checks: it knows what a label may be),
    ``preference``, ``unpaired_preference`` or ``prompt``.
    """
    if len(rows) == 0:
        raise DataError(f"{where} is empty: give at least one row.")
    leaked = [c for c in rows.column_names if c.startswith("__index_level_")]
    if leaked:
        # pandas turns the extra leading fields of rows longer than the header into an index,
        # which would silently shift every value one column over.
        raise DataError(
            f"{where} has rows with more fields than its header (they came out as the columns {leaked}); "
            "in a CSV file, quote every field that contains a comma, and give each row as many fields as the header."
        )
    if columns:
        missing = [c for c in columns if c not in rows.column_names]
        if missing:
            raise DataError(
                f"data.columns renames {missing}, but {where} has only the columns {rows.column_names}."
            )
        renames = check_renames(columns, rows.column_names, where)
        if renames:
            rows = rows.rename_columns(renames)
    fmt = detect_format(rows.column_names)
    if fmt == "unpaired_preference" and not all(isinstance(v, bool) for v in rows["label"]):
        fmt = "prompt_completion"  # a label that is not true/false judges nothing: prompt/completion rows with an extra column
    if fmt == "preference":
        return fmt, _preference_rows(rows, where)
    if fmt == "unpaired_preference":
        rows = rows.select_columns(["prompt", "completion", "label"])
        for i, row in enumerate(rows):
            _check_prompt(row["prompt"], f"{where} row {i}, column 'prompt'")
            _check_str(row["completion"], f"{where} row {i}, column 'completion'")
        return fmt, rows
    if fmt == "prompt":
        has_reference = "reference" in rows.column_names
        rows = rows.select_columns(["prompt"] + (["reference"] if has_reference else []))
        for i, row in enumerate(rows):
            _check_prompt(row["prompt"], f"{where} row {i}, column 'prompt'")
            if has_reference and row["reference"] is not None:
                _check_str(row["reference"], f"{where} row {i}, column 'reference'")
        return fmt, rows
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
    if fmt == "classification":
        pair = "text_pair" in rows.column_names
        rows = rows.select_columns(["text", "label"] + (["text_pair"] if pair else []))
        for i, row in enumerate(rows):
            for key in ("text",) + (("text_pair",) if pair else ()):
                _check_str(row[key], f"{where} row {i}, column {key!r}")
            if row["label"] is None:
                raise DataError(f"{where} row {i} has no label (column 'label' is empty); give every row a label.")
        return fmt, rows
    keep = ["prompt", "completion"] if fmt == "prompt_completion" else ["text"]
    system = fmt == "prompt_completion" and "system" in rows.column_names  # placed by a chat template
    rows = rows.select_columns(keep + (["system"] if system else []))
    for i, row in enumerate(rows):
        for key in keep:
            _check_str(row[key], f"{where} row {i}, column {key!r}")
        if system and row["system"] is not None:
            _check_str(row["system"], f"{where} row {i}, column 'system'")
    return fmt, rows


def _preference_rows(rows: Dataset, where: str) -> Dataset:
    """Preference rows as ``{"prompt", "chosen", "rejected"}``: the prompt a text or chat messages, the two answers texts."""
    has_prompt = "prompt" in rows.column_names

    def one(row: dict[str, Any], index: int) -> dict[str, Any]:
        at = f"{where} row {index}"
        chosen, rejected = row["chosen"], row["rejected"]
        prompt = row["prompt"] if has_prompt else None
        if prompt is None and isinstance(chosen, list) and isinstance(rejected, list):
            prompt, chosen, rejected = _split_conversations(chosen, rejected, at)
        if prompt is None:
            raise DataError(
                f"{at} has no prompt: give a 'prompt' column, or give 'chosen' and 'rejected' as two whole "
                "conversations that share their history."
            )
        _check_prompt(prompt, f"{at}, column 'prompt'")
        return {"prompt": prompt, "chosen": _answer(chosen, f"{at}, column 'chosen'"),
                "rejected": _answer(rejected, f"{at}, column 'rejected'")}

    return rows.map(one, with_indices=True, remove_columns=rows.column_names)


def _split_conversations(chosen: list[Any], rejected: list[Any], where: str) -> tuple[list[Any], list[Any], list[Any]]:
    """The shared history of two conversations, and the last assistant turn that differs."""
    _check_messages(chosen, f"{where}, column 'chosen'")
    _check_messages(rejected, f"{where}, column 'rejected'")
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0 or len(chosen) != shared + 1 or len(rejected) != shared + 1:
        raise DataError(
            f"{where}: 'chosen' and 'rejected' must be two conversations with the same history that differ in "
            "their last message (one assistant turn each); or give the history as 'prompt' and the two answers apart."
        )
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _answer(value: Any, where: str) -> str:
    """An answer given as a text, or as one assistant message (a mapping, or a list holding one)."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, Mapping):
        if value.get("role") != "assistant" or "content" not in value:
            raise DataError(f"{where}: an answer given as a message must be one {{'role': 'assistant', 'content': ...}}.")
        value = value["content"]
    _check_str(value, where)
    return str(value)


def _check_prompt(value: Any, where: str) -> None:
    """A prompt is a text, or chat messages (that do not end with the answer)."""
    if isinstance(value, list):
        _check_messages(value, where)
    else:
        _check_str(value, where)


def check_row(fmt: str, row: dict[str, Any], where: str) -> dict[str, Any]:
    """One row of a stream checked as :func:`normalise_rows` checks a dataset's, in its canonical
    columns (an instruction row becomes prompt/completion)."""
    if fmt == "chat":
        _check_messages(row["messages"], where)
        return {"messages": row["messages"]}
    if fmt == "instruction":
        for key in ("instruction", "output"):
            _check_str(row[key], f"{where}, column {key!r}")
        if row.get("input") is not None:
            _check_str(row["input"], f"{where}, column 'input'")
        return {"prompt": instruction_prompt(row["instruction"], row.get("input")), "completion": row["output"]}
    if fmt == "classification":
        _check_str(row["text"], f"{where}, column 'text'")
        if row.get("text_pair") is not None:
            _check_str(row["text_pair"], f"{where}, column 'text_pair'")
        if row["label"] is None:
            raise DataError(f"{where} has no label (column 'label' is empty); give every row a label.")
        return dict(row)
    keys = ["prompt", "completion"] if fmt == "prompt_completion" else ["text"]
    for key in keys:
        _check_str(row[key], f"{where}, column {key!r}")
    out = {key: row[key] for key in keys}
    if fmt == "prompt_completion" and "system" in row:
        if row["system"] is not None:
            _check_str(row["system"], f"{where}, column 'system'")
        out["system"] = row["system"]
    return out


def check_renames(columns: Mapping[str, str], existing: list[str], where: str = "data") -> dict[str, str]:
    """The renames of ``data.columns`` to apply (``{old: new}``, renames to itself left out), or a
    ``DataError`` when two columns would end up with the same name: two renamed to one name, or one
    renamed onto a column that stays (datasets would keep both, under one name)."""
    renames = {old: new for old, new in columns.items() if old != new}
    empty = [old for old, new in renames.items() if not new]
    if empty:
        raise DataError(f"data.columns renames {empty} to an empty name; give every column a name.")
    targets: dict[str, list[str]] = {}
    for old, new in renames.items():
        targets.setdefault(new, []).append(old)
    for new, olds in targets.items():
        if len(olds) > 1:
            raise DataError(
                f"data.columns renames {sorted(olds)} all to {new!r}; a column name can be used once. "
                "Rename only the column that holds the data, and drop or rename the others."
            )
    kept = set(existing) - set(renames)
    clashes = sorted(new for new in targets if new in kept)
    if clashes:
        old = targets[clashes[0]][0]
        raise DataError(
            f"data.columns renames {old!r} to {clashes[0]!r}, but {where} already has a column "
            f"{clashes[0]!r}; two columns would share the name. Rename or drop the existing "
            f"{clashes[0]!r} column too (e.g. columns={{{clashes[0]!r}: 'unused_{clashes[0]}', {old!r}: {clashes[0]!r}}})."
        )
    return renames


def split_sizes(rows: int, fraction: float) -> tuple[int, int]:
    """``(train, eval)`` row counts of holding out ``fraction`` of ``rows`` (as datasets'
    ``train_test_split`` does: the eval count rounds up), or a ``DataError`` when either is 0."""
    import math

    held_out = math.ceil(fraction * rows)
    train = rows - held_out
    if rows < 2:
        raise DataError("data.eval_fraction needs at least 2 training rows to split.")
    if train < 1 or held_out < 1:
        raise DataError(
            f"data.eval_fraction={fraction:g} of {rows} rows holds out {held_out} for evaluation and "
            f"leaves {train} training row(s); every split needs at least one row. Lower "
            "data.eval_fraction, add rows, or give eval data explicitly."
        )
    return train, held_out


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
