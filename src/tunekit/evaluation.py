"""Evaluation of a model on tokenized rows: token-weighted loss and perplexity."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from tunekit.data.collate import IGNORE_INDEX, PadPerBatch
from tunekit.results import EvalResult

if TYPE_CHECKING:
    import torch
    from datasets import Dataset


def evaluate_loss(model: torch.nn.Module, rows: Dataset, *, pad_token_id: int, batch_size: int = 8) -> EvalResult:
    """Mean cross-entropy per trained token over ``rows`` (``input_ids`` + ``labels``).

    Weighted by tokens, not by batch, so the figure does not depend on the batch size
    or on how rows happen to be grouped.
    """
    import torch

    collate = PadPerBatch(pad_token_id=pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                batch = collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
                batch = {k: v.to(device) for k, v in batch.items()}
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                shift_logits = logits[:, :-1, :].float()
                shift_labels = batch["labels"][:, 1:]
                loss = torch.nn.functional.cross_entropy(
                    shift_logits.reshape(-1, shift_logits.size(-1)),
                    shift_labels.reshape(-1),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
                total_loss += float(loss)
                total_tokens += int((shift_labels != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    mean = total_loss / total_tokens if total_tokens else float("nan")
    return EvalResult(loss=mean, perplexity=math.exp(min(mean, 700.0)), tokens=total_tokens, rows=len(rows))
