"""The causal-LM loss, with the LM head run only where a token is trained.

transformers' causal-LM ``forward(labels=...)`` projects every position onto the vocabulary,
then throws away the logits of the positions whose next token is masked (the prompt under
``sft``, and the padding). With a large vocabulary that is the largest tensor of the step:
SmolLM2's 49,152-token head on a batch of 8 x 200 tokens is 315 MB of fp32 logits, kept for the
backward pass together with its softmax, and 20-30% of the step's matmul work. Models in
transformers 5 accept ``logits_to_keep`` as a boolean (batch, length) mask and then project only
the kept positions, so this loss asks for exactly the positions whose next token is trained and
computes the same cross-entropy as transformers (float32, sum over trained tokens divided by
``num_items_in_batch`` or by their count). The loss and the gradients are the same; the logits
of the skipped positions never exist.

Calling the model's own ``forward`` (not its decoder and head separately) keeps every wrapper in
the path: peft, DDP/FSDP, and a model's own logit post-processing (soft-capping, scaling).
A model whose ``forward`` does not take a boolean mask is detected once by
:func:`supports_trained_logits` and keeps the model's own loss. On a toy model (a head of a few
thousand weights) selecting the positions saves nothing measurable (the benchmark's
``head_positions`` lever on its tiny GPT-2) and adds work per step, hence
:data:`AUTO_MIN_HEAD_WEIGHTS`.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

IGNORE = -100
_PROBED: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
"""The probe's answer per model object: fit, evaluate and preflight ask about the same model."""
AUTO_MIN_HEAD_WEIGHTS = 1 << 20
"""``trained_logits_only="auto"`` uses the loss when the output head has at least this many
weights: 2^20 is 1,024 x 1,024; SmolLM2-135M's head has 28M, GPT-2's 39M."""


def use_trained_logits(model: Any, setting: bool | str) -> bool:
    """Whether fit should use :func:`trained_logits_loss` on ``model`` for ``training.trained_logits_only``."""
    if setting is False:
        return False
    if setting == "auto":
        get_head = getattr(model, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
        if head is None:
            return False
        size = getattr(head, "in_features", 0) * getattr(head, "out_features", 0) or head.weight.numel()
        if size < AUTO_MIN_HEAD_WEIGHTS:
            return False
    return supports_trained_logits(model)


def _inner_forward_params(model: Any) -> set[str]:
    """The parameter names of the transformers model's ``forward`` under any peft wrapper."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(inner.forward).parameters)


def supports_trained_logits(model: Any) -> bool:
    """Whether ``model`` projects only the positions of a boolean ``logits_to_keep`` mask.

    Checked on a 6-token probe (no gradients, in eval mode): the kept logits must have one row
    per kept position and equal the full forward's logits at those positions.
    """

    if "logits_to_keep" not in _inner_forward_params(model):
        return False
    config = getattr(model, "config", None)
    if getattr(config, "output_router_logits", False):  # mixture of experts: the loss adds an auxiliary term
        return False
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab < 2:
        return False
    if model not in _PROBED:
        _PROBED[model] = _probe(model, vocab)
    return _PROBED[model]


def _probe(model: Any, vocab: int) -> bool:
    import torch

    device = next(model.parameters()).device
    ids = torch.arange(6, device=device).remainder(vocab).view(1, 6)
    keep = torch.tensor([[False, True, False, True, True, False]], device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            full = model(input_ids=ids).logits
            kept = model(input_ids=ids, logits_to_keep=keep).logits
    except Exception as exc:  # a model whose forward cannot take the mask keeps its own loss
        log.info("tunekit: %s does not take a boolean logits_to_keep (%s); using its own loss", type(model).__name__, exc)
        return False
    finally:
        model.train(was_training)
    if kept.dim() != 2 or kept.shape[0] != int(keep.sum()):
        return False
    return bool(torch.allclose(kept.float(), full[keep].float(), rtol=1e-3, atol=1e-3))


def trained_positions(labels: torch.Tensor) -> torch.Tensor:
    """The (batch, length) mask of positions whose next token is trained."""
    import torch

    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    return keep


def trained_logits_loss(
    model: Any,
    inputs: dict[str, Any],
    num_items_in_batch: Any = None,
    *,
    skip_untrained: bool = True,
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """Next-token cross-entropy over the trained tokens, projecting only the positions that need it.

    The same value as ``model(**inputs).loss`` (transformers' ``ForCausalLMLoss``): float32
    cross-entropy summed over trained tokens and divided by ``num_items_in_batch`` when given,
    else averaged over them; ``reduction="sum"`` returns the sum. ``skip_untrained=False``
    projects every position (for a model without the mask, see :func:`supports_trained_logits`)
    and then scores the same tokens.
    """
    import torch

    inputs = dict(inputs)
    labels = inputs.pop("labels")
    keep = trained_positions(labels)
    targets = labels[:, 1:][keep[:, :-1]]
    inputs.setdefault("use_cache", False)  # no key/value cache is built for a training step
    if skip_untrained:
        logits = model(**inputs, logits_to_keep=keep).logits
    else:
        logits = model(**inputs).logits[keep]
    loss = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    if reduction == "sum":
        return loss
    if num_items_in_batch is not None:
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        return loss / num_items_in_batch
    return loss / max(int(targets.numel()), 1)
