"""A batch's shared prompt prefix, run once per batch instead of once per row.

Rows rendered with one chat template start with the same tokens: the system prompt and the
template's markers (the demo's iso-dates rows share 23 of their 47-50 tokens under SmolLM2's
template). When every row of a batch starts with the same ``p`` real tokens, the model runs those
``p`` tokens once (a batch of one) into a KV cache, the cache's rows are repeated for the batch, and
each row's remaining tokens run on that cache. The prefix ends before the first position whose
logits any row's loss needs. Every row attends to the same keys and values at the same positions as
before, so the logits and the loss are the same; the repeated cache is part of the autograd graph,
which sums the rows' gradients back into the one prefix, so the gradients are the same too
(``tests/test_shared_prefix.py`` compares both with the plain step on GPT-2 and Llama shapes, LoRA
and full fine-tuning). The batch then runs ``(batch - 1) * p`` fewer positions through every layer.

The plain step runs instead when:

- gradient checkpointing is on (transformers turns the cache off in training then);
- more than one process trains or evaluates: a DDP module would run two forwards per backward, and a
  sharded one (FSDP) needs every rank to run the same number of forwards per batch;
- the model's cache is not plain KV layers (sliding windows, linear attention), its forward does not
  take a cache and position ids, or a one-time probe (6 tokens, no gradients) finds that the shared
  prefix gives other logits than the plain forward;
- a batch shares too little: a batch shares its prefix when that saves at least
  :data:`MIN_SAVED_SHARE` of its positions (an extra forward call has a fixed cost);
- the batch carries inputs other than ``input_ids`` and ``attention_mask`` (position ids of packed
  rows, token types...);
- the loss is the model's own rather than tunekit's trained-positions loss (see
  :mod:`tunekit.training.loss`).
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

from tunekit.errors import ConfigError, Problem
from tunekit.models.kv_cache import base_model, cache_keyword, new_cache, plain_layers, takes_cache
from tunekit.training.numerics import same_logits

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MIN_SAVED_SHARE = 0.1
"""A batch shares its prefix when that saves at least this share of its token positions."""
_PLAIN_INPUTS = {"input_ids", "attention_mask", "use_cache"}
_PROBED: weakref.WeakKeyDictionary[Any, bool | str] = weakref.WeakKeyDictionary()
"""The probe's answer per model object (True, or why not)."""


def prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, keep: torch.Tensor) -> int:
    """How many leading positions every row shares: the same real token, and no row's logits needed there.

    ``keep`` is the (batch, length) mask of the positions whose logits the loss needs
    (:func:`tunekit.training.loss.trained_positions`).
    """
    same = (input_ids == input_ids[:1]).all(0) & ~keep.any(0)
    if attention_mask is not None:
        same &= attention_mask.bool().all(0)
    return int(same.long().cumprod(0).sum())


def worth_sharing(batch: int, length: int, prefix: int) -> bool:
    """Whether a batch of ``batch`` rows of ``length`` positions should run its ``prefix`` once."""
    return batch >= 2 and 0 < prefix < length and (batch - 1) * prefix >= MIN_SAVED_SHARE * batch * length


def shareable(inputs: dict[str, Any]) -> bool:
    """Whether a batch carries only what the shared forward knows how to split."""
    return set(inputs) <= _PLAIN_INPUTS


def shared_prefix_logits(model: Any, inputs: dict[str, Any], keep: torch.Tensor, prefix: int) -> torch.Tensor:
    """The logits at ``keep``'s positions (one row per kept position, in row-major order), from a forward
    whose first ``prefix`` positions ran once for the whole batch (see the module docstring)."""
    import torch

    ids = inputs["input_ids"]
    rows, length = ids.shape
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    cache_kw = cache_keyword(model)
    cache = new_cache(model)
    # keep all False: the prefix's positions need no logits, so none are projected
    model(input_ids=ids[:1, :prefix], attention_mask=mask[:1, :prefix], use_cache=True, logits_to_keep=keep[:1, :prefix], **{cache_kw: cache})
    cache.batch_repeat_interleave(rows)
    positions = torch.arange(prefix, length, device=ids.device).expand(rows, -1)
    out = model(
        input_ids=ids[:, prefix:], attention_mask=mask, position_ids=positions, use_cache=True,
        logits_to_keep=keep[:, prefix:], **{cache_kw: cache},
    )
    logits: torch.Tensor = out.logits
    return logits


def _why_not(model: Any) -> str | None:
    """Why ``model`` cannot share a prefix (a reason to log), or None when it can."""
    if not takes_cache(model):
        return "its forward does not take a KV cache, an attention mask and position ids"
    config = getattr(base_model(model), "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return "it is not a decoder-only transformers model"
    if not plain_layers(new_cache(model)):
        return "its KV cache has sliding-window or linear-attention layers"
    if model not in _PROBED:
        _PROBED[model] = _probe(model, int(getattr(config, "vocab_size", 0) or 0))
    answer = _PROBED[model]
    return answer if isinstance(answer, str) else None


PROBE_PREFIX = 3
"""The probe's two rows share this many leading tokens."""


def probe_batch(vocab: int, device: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The probe's batch: (input_ids, attention_mask, trained positions), two rows sharing
    :data:`PROBE_PREFIX` tokens, the second padded."""
    import torch

    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 7, 6, 0]], device=device).remainder(vocab)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]], device=device)
    keep = mask.bool().clone()
    keep[:, :PROBE_PREFIX] = False
    return ids, mask, keep


def _probe(model: Any, vocab: int) -> bool | str:
    """True, or why two rows sharing three tokens do not give the plain forward's logits."""
    import torch

    if vocab < 8:
        return "its config has no vocab_size"
    ids, mask, keep = probe_batch(vocab, next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            plain = model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
            try:
                shared = shared_prefix_logits(model, {"input_ids": ids, "attention_mask": mask}, keep, PROBE_PREFIX)
            except torch.OutOfMemoryError:
                raise
            except (TypeError, ValueError, IndexError, RuntimeError, AttributeError) as exc:
                log.debug("tunekit: the shared-prefix probe failed", exc_info=exc)
                return f"failed the shared-prefix probe ({type(exc).__name__}: {exc})"
    finally:
        model.train(was_training)
    if not same_logits(shared, plain):
        return "gave different logits with the prefix run once than without"
    return True


def use_shared_prefix(model: Any, setting: bool | str, *, trained_logits: bool, gradient_checkpointing: bool = False) -> bool:
    """Whether batches of ``model`` should run their shared prefix once, for ``training.shared_prefix``.

    ``"auto"`` answers False quietly where it cannot apply (the module docstring lists when);
    ``True`` raises a :class:`~tunekit.errors.ConfigError` saying why instead.
    """
    if setting is False:
        return False
    reason = _blocker(model, trained_logits=trained_logits, gradient_checkpointing=gradient_checkpointing)
    if reason is None:
        return True
    if setting is True:
        raise ConfigError([Problem("training.shared_prefix", f"cannot run a batch's shared prefix once: {reason}. "
                                   "Set training.shared_prefix to 'auto' (or false) to train without it.")])
    log.debug("tunekit: batches run their shared prefix per row: %s", reason)
    return False


def _blocker(model: Any, *, trained_logits: bool, gradient_checkpointing: bool) -> str | None:
    import torch

    if not trained_logits:
        return "the loss is the model's own (training.trained_logits_only is off or the model cannot skip positions)"
    if gradient_checkpointing:
        return "gradient checkpointing is on, and transformers turns the KV cache off under it"
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        return "more than one process runs the model"
    return _why_not(model)
