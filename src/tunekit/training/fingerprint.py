"""What a run is, in a form a checkpoint can carry: config fields and hashes of the tokenized data.

A resume compares the fingerprint stored in the checkpoint with the current one and refuses
a mismatch, naming the differing fields (``fit(..., accept_changes=True)`` accepts it). Fields
that may change between a run and its resume (the step budget, logging, where it is written)
are left out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

RESUME_MAY_CHANGE = frozenset({
    "output_dir", "metrics",
    "training.max_steps", "training.epochs", "training.progress_bar", "training.logging_steps",
    "training.eval_steps", "training.save_steps", "training.keep_checkpoints", "training.cpu_threads",
    "training.shared_prefix", "training.packing",  # the same loss on the same batches, computed another way
    "data.train", "data.eval",  # file names: the content hashes below decide
})


def _flatten(value: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(value, Mapping) and value:
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: json.dumps(value, sort_keys=True, default=str)}


STREAM_DIGEST_ROWS = 64
"""A stream's identity in a fingerprint: its first rows, tokenized (hashing all would read it all)."""


def rows_digest(rows: Any) -> str:
    """sha256 of tokenized rows' ``input_ids`` and ``labels`` (order included).

    A stream (``IterableDataset``) is identified by its first ``STREAM_DIGEST_ROWS`` tokenized
    rows, marked ``stream:``: a different source, split or tokenization changes them; a change
    further into the same stream is not seen.
    """
    h = hashlib.sha256()
    if rows is None:
        return "none"
    if type(rows).__name__ == "IterableDataset":
        for row in rows.take(STREAM_DIGEST_ROWS):
            for column in ("input_ids", "labels"):
                value = row.get(column)
                # a classification row's label is one class id (or a multi-hot list), not a token list
                seq = [int(t) for t in (value if isinstance(value, list) else [] if value is None else [value])]
                h.update(len(seq).to_bytes(4, "little"))
                h.update(b"".join(t.to_bytes(8, "little", signed=True) for t in seq))
        return "stream:" + h.hexdigest()
    import numpy as np

    for column in ("input_ids", "labels"):
        if column not in rows.column_names:
            continue
        for batch in rows.with_format("numpy").iter(batch_size=4096):
            for item in batch[column]:
                values = np.atleast_1d(item)  # one class id per row for a classification head
                h.update(len(values).to_bytes(4, "little"))
                h.update(values.astype("int64").tobytes())
    return h.hexdigest()


def run_fingerprint(config: Mapping[str, Any], train_rows: Any, eval_rows: Any) -> dict[str, str]:
    """The fields a resume must match: the config (JSON dump) flattened, and the data hashes."""
    fields = {k: v for k, v in _flatten(config).items() if k not in RESUME_MAY_CHANGE}
    fields["data (training rows, tokenized)"] = rows_digest(train_rows)
    fields["data (eval rows, tokenized)"] = rows_digest(eval_rows)
    return fields


def changed_fields(saved: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """The fields whose value differs, with both values, for an error message."""
    changes = []
    for key in sorted(set(saved) | set(current)):
        if key in RESUME_MAY_CHANGE:
            continue
        before, now = saved.get(key, "(absent)"), current.get(key, "(absent)")
        if before != now:
            if key.startswith("data ("):
                changes.append(f"{key}: changed")
            else:
                changes.append(f"{key}: {_short(before)} -> {_short(now)}")
    return changes


def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."
