"""Batch collation: pad each batch to its own longest row, never to max_length."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100


@dataclass
class PadPerBatch:
    """Pads ``input_ids`` with the pad id and ``labels`` with -100 to the batch's longest row.

    Padding positions are masked by position (``attention_mask``), never by token id, so an
    EOS token that equals the pad token is still attended to and trained.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        input_ids = torch.full((len(features), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(features), longest), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[i, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.as_tensor(f["labels"], dtype=torch.long)
            attention[i, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


@dataclass
class PackedRows:
    """Padding-free batches: a batch's rows side by side in one sequence, with no padding at all.

    ``position_ids`` restart at 0 at each row, and no ``attention_mask`` is passed: transformers then
    finds the rows from the positions and masks attention block-diagonally (a varlen kernel on flash
    attention), so no row sees another (``training.packing``; the one-time check that a model really
    isolates them is :func:`tunekit.training.packing.isolates_packed_rows`). Each row's first label is
    dropped (-100): it would be predicted from the previous row's last token. That token is never a
    target in a padded batch either (nothing precedes it), so the loss is the same. The batch says
    ``use_cache=False``: transformers looks for packed rows only when no KV cache is built.
    """

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for f in features:
            row = list(f["input_ids"])
            ids += row
            labels += [IGNORE_INDEX, *list(f["labels"])[1:]]
            positions += range(len(row))
        batch: dict[str, Any] = {name: torch.tensor([values], dtype=torch.long) for name, values in
                                 (("input_ids", ids), ("labels", labels), ("position_ids", positions))}
        # With a KV cache (models default to use_cache=True, GPT-2 even in training) transformers does not
        # look for packed rows in the positions, and every row would attend to the rows before it.
        batch["use_cache"] = False
        return batch


def collator_for(objective: Any, tokenizer: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """The collator training batches ``objective``'s rows with: ``objective.collator(tokenizer)``, or
    per-batch padding for an objective without one (the ``collator`` method is optional)."""
    make = getattr(objective, "collator", None)
    if callable(make):
        return make(tokenizer)  # type: ignore[no-any-return]
    return PadPerBatch(pad_token_id=int(tokenizer.pad_token_id))
