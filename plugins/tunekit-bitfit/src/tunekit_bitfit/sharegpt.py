"""ShareGPT-style conversations as tunekit chat rows."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from tunekit import DataError
from tunekit.data.rows import LoadedData
from tunekit.parts import PartOptions

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system", "tool": "tool"}


class ShareGPTOptions(PartOptions):
    field: str = Field(default="conversations", description="The column holding the conversation.")


class ShareGPTAdapter:
    """Rows ``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}`` from Python or a .json/.jsonl file."""

    name: ClassVar[str] = "sharegpt"
    description: ClassVar[str] = "ShareGPT conversations ({'from', 'value'} turns), from rows or .json/.jsonl files."
    Options: ClassVar[type[ShareGPTOptions]] = ShareGPTOptions

    def __init__(self, options: ShareGPTOptions):
        self.options = options

    def can_load(self, source: Any) -> bool:
        if isinstance(source, (list, tuple)):
            return bool(source) and isinstance(source[0], Mapping) and self.options.field in source[0]
        return isinstance(source, (str, Path)) and str(source).endswith((".json", ".jsonl")) and Path(source).is_file() and self._peek(Path(source))

    def _peek(self, path: Path) -> bool:
        try:
            return self.options.field in self._read(path)[0]
        except (DataError, IndexError, KeyError, TypeError):
            return False

    def _read(self, path: Path) -> list[Any]:
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".jsonl":
                return [json.loads(line) for line in text.splitlines() if line.strip()]
            data = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{str(path)!r} is not valid UTF-8 JSON: {exc}") from None
        if not isinstance(data, list):
            raise DataError(f"{str(path)!r} must hold a JSON list of conversations.")
        return data

    def load(self, source: Any) -> LoadedData:
        from datasets import Dataset

        rows = self._read(Path(source)) if isinstance(source, (str, Path)) else list(source)
        if not rows:
            raise DataError("the ShareGPT data is empty.")
        converted = []
        for i, row in enumerate(rows):
            turns = row.get(self.options.field) if isinstance(row, Mapping) else None
            if not isinstance(turns, list):
                raise DataError(f"row {i} has no {self.options.field!r} list of turns.")
            messages = []
            for j, turn in enumerate(turns):
                if not isinstance(turn, Mapping) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
                    raise DataError(
                        f"row {i}, turn {j}: needs 'from' (one of {', '.join(ROLES)}) and a string 'value', got {turn!r:.80}."
                    )
                messages.append({"role": ROLES[turn["from"]], "content": turn["value"]})
            converted.append({"messages": messages})
        return LoadedData(Dataset.from_list(converted), None, f"{len(converted)} ShareGPT conversations")
