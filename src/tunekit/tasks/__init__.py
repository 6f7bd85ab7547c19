"""Small task datasets shipped with tunekit, for the demo, tests and tutorials (no download).

>>> from tunekit.tasks import TASKS, load_task
>>> rows = load_task("iso-dates", "test")
>>> rows[0]["messages"][-1]["content"]
'2061-09-18'
>>> sorted(TASKS)
['iso-dates', 'word-sentiment']
>>> load_task("word-sentiment", "train")[0].keys()
dict_keys(['text', 'label'])
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from tunekit.errors import DataError, join_names

TASKS = {"iso-dates": "iso_dates", "word-sentiment": "word_sentiment"}
"""Task name -> directory inside this package (each holds ``train.jsonl`` and ``test.jsonl``)."""


def task_file(name: str, split: str) -> Path:
    """The path of a shipped task's split (``train`` or ``test``) as a ``.jsonl`` file."""
    if name not in TASKS:
        raise DataError(f"unknown shipped task {name!r}; tunekit ships {join_names(TASKS)}.")
    path = Path(str(resources.files(__name__) / TASKS[name] / f"{split}.jsonl"))
    if not path.is_file():
        raise DataError(f"task {name!r} has no {split!r} split; use 'train' or 'test'.")
    return path


def load_task(name: str, split: str) -> list[dict[str, Any]]:
    """The rows of a shipped task's split, as a list of dicts."""
    with open(task_file(name, split), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
