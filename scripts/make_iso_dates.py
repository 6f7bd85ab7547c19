"""Regenerate the ``iso-dates`` task shipped in ``src/tunekit/tasks/iso_dates/``.

The task: rewrite a date written in English (``"the 5th of March 2021"``, ``"Mar 5, 2021"``...)
as an ISO 8601 date (``"2021-03-05"``). Every row is a chat: a system instruction, the date
as the user's message, the ISO date as the assistant's answer. Dates are drawn uniformly
from 1900-2099; the train and test splits hold disjoint calendar dates, so no test row
(not even in another wording) was seen in training. The output is deterministic::

    python scripts/make_iso_dates.py
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "tunekit" / "tasks" / "iso_dates"
SYSTEM = "Give this date as YYYY-MM-DD, nothing else."
SEED = 20240501
SIZES = {"train": 800, "test": 100}


def _ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def wordings(date: dt.date) -> list[str]:
    """Unambiguous English spellings of ``date`` (no numeric day/month orders)."""
    month, mon, day, year = date.strftime("%B"), date.strftime("%b"), date.day, date.year
    return [
        f"{month} {day}, {year}",
        f"{day} {month} {year}",
        f"{mon} {day}, {year}",
        f"{day} {mon} {year}",
        f"{month} {_ordinal(day)}, {year}",
        f"the {_ordinal(day)} of {month} {year}",
        f"{date.strftime('%A')}, {month} {day}, {year}",
        f"{day}-{mon}-{year}",
    ]


def row(date: dt.date, rng: random.Random) -> dict[str, object]:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": rng.choice(wordings(date))},
            {"role": "assistant", "content": date.isoformat()},
        ]
    }


def main() -> None:
    rng = random.Random(SEED)
    first, last = dt.date(1900, 1, 1).toordinal(), dt.date(2099, 12, 31).toordinal()
    total = sum(SIZES.values())
    dates = [dt.date.fromordinal(o) for o in rng.sample(range(first, last + 1), total)]  # distinct dates
    OUT.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, size in SIZES.items():
        with open(OUT / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for date in dates[start : start + size]:
                f.write(json.dumps(row(date, rng)) + "\n")
        start += size


if __name__ == "__main__":
    main()
