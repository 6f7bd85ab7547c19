"""``training.packing``: padding-free batches, and the check that a model keeps packed rows apart.

:class:`tunekit.data.collate.PackedRows` lays a batch's rows side by side in one sequence with
positions restarting at each row. Whether the rows then stay isolated is the model's attention
code's business: transformers 5 derives a block-diagonal mask from the positions for models built on
its masking utilities (Llama, Qwen, Mistral, GPT-2 and most others), and flash attention runs a
varlen kernel. A model whose attention ignores the positions would let each row attend to the rows
before it and train on the wrong context without any error, so packing is checked once per model: two
rows' logits packed must equal their logits run apart (:func:`isolates_packed_rows`), or ``fit``
refuses with a :class:`~tunekit.errors.ConfigError`.

Packing is off by default: with length-grouped batches there is little padding left to remove, and
on this project's CPU it bought 14% on SmolLM2 but cost 33% on a toy model (docs/performance.md).
"""

from __future__ import annotations

import weakref
from typing import Any

from tunekit.errors import ConfigError, Problem
from tunekit.training.numerics import same_logits

_CHECKED: weakref.WeakKeyDictionary[Any, bool | str] = weakref.WeakKeyDictionary()


def isolates_packed_rows(model: Any) -> bool | str:
    """True when two rows packed into one sequence give the logits they give apart; else why not."""
    if model not in _CHECKED:
        _CHECKED[model] = _check(model)
    return _CHECKED[model]


def _check(model: Any) -> bool | str:
    import torch

    from tunekit.data.collate import PackedRows

    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 0)
    if vocab < 8:
        return "its config has no vocab_size"
    device = next(model.parameters()).device
    rows = [[1, 2, 3, 4, 5], [6, 7, 1, 2]]
    rows = [[t % vocab for t in row] for row in rows]
    packed = PackedRows()([{"input_ids": r, "labels": r} for r in rows])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            # the batch exactly as the Trainer passes it (less the labels)
            together = model(**{k: v.to(device) if hasattr(v, "to") else v for k, v in packed.items() if k != "labels"}).logits[0]
            apart = torch.cat([model(input_ids=torch.tensor([r], device=device), use_cache=False).logits[0] for r in rows])
    except torch.OutOfMemoryError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:
        return f"failed on a packed batch ({type(exc).__name__}: {exc})"
    finally:
        model.train(was_training)
    if not same_logits(together, apart):
        return "lets packed rows attend to each other (its logits differ from the rows run apart)"
    return True


def check_packing(model: Any, objective_name: str, *, batches_itself: bool) -> None:
    """Raise a ConfigError when ``training.packing`` cannot apply to ``model`` or to the objective."""
    if batches_itself:
        raise ConfigError([Problem("training.packing", f"the objective {objective_name!r} batches its rows or computes its loss its own way; "
                                   "packing applies to objectives that pad per batch (sft, causal-lm). Turn training.packing off.")])
    answer = isolates_packed_rows(model)
    if answer is not True:
        name = type(model.get_base_model() if hasattr(model, "get_base_model") else model).__name__
        raise ConfigError([Problem("training.packing", f"{name} {answer}; train it with training.packing off.")])
