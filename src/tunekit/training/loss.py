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
:func:`supports_trained_logits`, keeps the model's own loss, and a warning says so. On a toy model (a head of a few
thousand weights) selecting the positions saves nothing measurable (the benchmark's
``head_positions`` lever on its tiny GPT-2) and adds work per step, hence
:data:`AUTO_MIN_HEAD_WEIGHTS`.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from typing import TYPE_CHECKING, Any, Literal

from tunekit.models.kv_cache import forward_params
from tunekit.training.numerics import same_logits
from tunekit.training.shared_prefix import prefix_length, shareable, shared_prefix_logits, worth_sharing

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

IGNORE = -100
_PROBED: weakref.WeakKeyDictionary[Any, bool | str] = weakref.WeakKeyDictionary()
"""The probe's answer per model object (True, or why not): fit, evaluate and preflight ask about the same model."""
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


_FALLBACK_WARNED: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
"""The reason already logged per model object, so fit, evaluate and preflight warn once."""


def _takes_logits_to_keep(model: Any) -> bool | None:
    """True/False when ``forward``'s signature says whether it takes ``logits_to_keep``; None when
    only the ``**kwargs`` it takes could let it through (then the probe decides)."""
    params = forward_params(model)
    if "logits_to_keep" in params:
        return True
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return False


def _fall_back(model: Any, reason: str) -> bool:
    if _FALLBACK_WARNED.get(model) != reason:
        _FALLBACK_WARNED[model] = reason
        log.warning(
            "tunekit: %s; training and evaluation use the model's own loss, which projects every position "
            "onto the vocabulary (slower and more memory than projecting the trained positions only).",
            reason,
        )
    return False


def supports_trained_logits(model: Any) -> bool:
    """Whether ``model`` projects only the positions of a boolean ``logits_to_keep`` mask.

    The ``forward`` signature must take ``logits_to_keep`` (or ``**kwargs``); then a 6-token probe
    (no gradients, in eval mode) must give one row of logits per kept position, equal to the full
    forward's logits at those positions. When the answer is no, a warning says why (once per model
    and reason): the model's own loss is correct but slower.
    """
    name = type(model.get_base_model() if hasattr(model, "get_base_model") else model).__name__
    if _takes_logits_to_keep(model) is False:
        return _fall_back(model, f"{name}.forward does not take logits_to_keep")
    config = getattr(model, "config", None)
    if getattr(config, "output_router_logits", False):  # mixture of experts: the loss adds an auxiliary term
        return _fall_back(model, f"{name} adds the router's auxiliary loss (output_router_logits=True)")
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab < 2:
        return _fall_back(model, f"{name}'s config has no vocab_size")
    if model not in _PROBED:
        _PROBED[model] = _probe(model, vocab)
    if isinstance(_PROBED[model], str):
        return _fall_back(model, f"{name} {_PROBED[model]}")
    return True


def _probe(model: Any, vocab: int) -> bool | str:
    """True, or why the model cannot project a boolean mask of positions."""
    import torch

    device = next(model.parameters()).device
    ids = torch.arange(6, device=device).remainder(vocab).view(1, 6)
    keep = torch.tensor([[False, True, False, True, True, False]], device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            full = model(input_ids=ids).logits  # outside the except below: a broken model is not a "no"
            try:
                kept = model(input_ids=ids, logits_to_keep=keep).logits
            except torch.OutOfMemoryError:
                raise
            except (TypeError, IndexError, RuntimeError) as exc:
                # The same forward just ran without the mask, so this failure is the mask's: a forward
                # without the argument (TypeError), or one that takes only an int count of last positions
                # (negating or slicing by a bool tensor).
                log.debug("tunekit: the logits_to_keep probe failed", exc_info=exc)
                return f"does not take a boolean logits_to_keep mask ({type(exc).__name__}: {exc})"
    finally:
        model.train(was_training)
    if kept.dim() != 2 or kept.shape[0] != int(keep.sum()):
        return f"returned logits of shape {tuple(kept.shape)} for a boolean logits_to_keep mask of {int(keep.sum())} positions"
    if not same_logits(kept, full[keep]):
        return "gave different logits with a boolean logits_to_keep mask than without"
    return True


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
    shared_prefix: bool = False,
) -> torch.Tensor:
    """Next-token cross-entropy over the trained tokens, projecting only the positions that need it.

    The same value as ``model(**inputs).loss`` (transformers' ``ForCausalLMLoss``): float32
    cross-entropy summed over trained tokens and divided by ``num_items_in_batch`` when given,
    else averaged over them; ``reduction="sum"`` returns the sum. ``skip_untrained=False``
    projects every position (for a model without the mask, see :func:`supports_trained_logits`)
    and then scores the same tokens. ``shared_prefix`` (decided by
    :func:`tunekit.training.shared_prefix.use_shared_prefix`) runs the tokens every row of the batch
    starts with once, where that saves enough (the same loss and gradients).
    """
    import torch

    inputs = dict(inputs)
    labels = inputs.pop("labels")
    keep = trained_positions(labels)
    targets = labels[:, 1:][keep[:, :-1]]
    inputs.setdefault("use_cache", False)  # no key/value cache is built for a training step
    prefix = 0
    if skip_untrained and shared_prefix and shareable(inputs):
        prefix = prefix_length(inputs["input_ids"], inputs.get("attention_mask"), keep)
        rows, length = labels.shape
        prefix = prefix if worth_sharing(rows, length, prefix) else 0
    if prefix:
        logits = shared_prefix_logits(model, inputs, keep, prefix)
    elif skip_untrained:
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
