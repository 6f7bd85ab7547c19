"""Greedy decoding for evaluation: the prompts' shared prefix runs once, finished rows leave the batch.

Evaluation prompts rendered with a chat template share a long head (the system prompt and the
template's markers). :func:`greedy_token_ids` runs that head once, copies its KV cache into
every batch, and feeds each batch only the rest of its prompts; a row that produced a stop token
leaves the batch, so the steps after it cost only the rows still generating. The answers are the
greedy answers of ``model.generate(do_sample=False)`` (tests/test_generation.py compares them).
Models it cannot drive this way (see :func:`supports_fast_greedy`) go through ``model.generate``.

>>> from tunekit.generation import shared_prefix_length
>>> shared_prefix_length([[1, 2, 3, 4], [1, 2, 5]])
2
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import Any

# Generation-config fields whose non-default value changes greedy decoding (a logits processor or a
# stopping rule ``generate`` would apply): with any of them set, the model goes through ``generate``.
_GREEDY_CHANGERS = (
    "repetition_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "min_length", "min_new_tokens", "suppress_tokens", "begin_suppress_tokens", "forced_bos_token_id",
    "forced_eos_token_id", "sequence_bias", "exponential_decay_length_penalty", "renormalize_logits",
    "stop_strings", "max_time", "num_beams", "penalty_alpha", "prompt_lookup_num_tokens", "watermarking_config",
    "assistant_model", "diversity_penalty", "constraints", "force_words_ids", "epsilon_cutoff", "eta_cutoff",
)


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all ``prompts`` share (at most the shortest prompt's length)."""
    if not prompts:
        return 0
    first, n = prompts[0], min(len(p) for p in prompts)
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return n


def _base_model(model: Any) -> Any:
    get = getattr(model, "get_base_model", None)  # a peft model: its forward passes keywords through
    return get() if callable(get) else model


def supports_fast_greedy(model: Any) -> bool:
    """Whether :func:`greedy_token_ids` can drive ``model``: a decoder-only transformers model with a
    dynamic KV cache and position ids, whose generation config changes nothing in greedy decoding."""
    base = _base_model(model)
    config = getattr(base, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False) or not callable(getattr(base, "generate", None)):
        return False
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False
    if not {"past_key_values", "position_ids", "attention_mask"} <= set(params):
        return False
    from transformers import GenerationConfig

    defaults = GenerationConfig()
    gen = getattr(model, "generation_config", None) or getattr(base, "generation_config", None)
    if gen is not None:
        for name in _GREEDY_CHANGERS:
            if getattr(gen, name, None) != getattr(defaults, name, None):
                return False
    return True


def _new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=_base_model(model).config)


def greedy_token_ids(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    batch_size: int,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    pad_token_id: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """The greedy continuation of every prompt (token ids, a stop token included), in the prompts' order.

    ``prompts`` are batched as given (sort them by length first, so a batch pads little). The
    prefix all prompts share, up to the shortest prompt's last token, is computed once. Call under
    ``torch.no_grad()`` with the model in eval mode. ``on_batch(rows)`` is called after each batch.
    """
    import torch

    device = next(model.parameters()).device
    keep_logits = "logits_to_keep" in inspect.signature(_base_model(model).forward).parameters
    stops = torch.tensor(sorted(set(stop_ids)) or [-1], device=device)
    prefix_len = min(shared_prefix_length(prompts), min((len(p) for p in prompts), default=1) - 1)
    prefix_cache = None
    if prefix_len > 0:
        prefix_cache = _new_cache(model)
        model(input_ids=torch.tensor([list(prompts[0][:prefix_len])], device=device), past_key_values=prefix_cache, use_cache=True,
              **({"logits_to_keep": 1} if keep_logits else {}))
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        rows = [list(p[prefix_len:]) for p in prompts[start : start + batch_size]]
        out.extend(_greedy_batch(model, rows, prefix_len, prefix_cache, max_new_tokens, stops, pad_token_id, keep_logits))
        if on_batch is not None:
            on_batch(len(rows))
    return out


def _greedy_batch(
    model: Any, rows: list[list[int]], prefix_len: int, prefix_cache: Any, max_new_tokens: int, stops: Any, pad: int, keep_logits: bool
) -> list[list[int]]:
    import torch

    device = stops.device
    width = max(len(r) for r in rows)
    n = len(rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    # the padding sits between the shared prefix and each row's own tokens; masked, it changes nothing
    mask = torch.cat([
        torch.ones(n, prefix_len, dtype=torch.long, device=device),
        torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device),
    ], dim=1)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)[:, prefix_len:]
    if prefix_cache is not None:
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(n)
    else:
        cache = _new_cache(model)
    extra = {"logits_to_keep": 1} if keep_logits else {}
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True, **extra).logits
    answers: list[list[int]] = [[] for _ in rows]
    alive = torch.arange(n, device=device)  # which row each line of the batch answers
    last = positions[:, -1]
    for step in range(max_new_tokens):
        nxt = logits[:, -1].argmax(dim=-1)
        for row, token in zip(alive.tolist(), nxt.tolist(), strict=True):
            answers[row].append(token)
        if step == max_new_tokens - 1:
            break
        going = ~torch.isin(nxt, stops)
        if not bool(going.all()):
            if not bool(going.any()):
                break
            keep = going.nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            alive, nxt, mask, last = alive[keep], nxt[keep], mask[keep], last[keep]
        mask = torch.cat([mask, torch.ones(mask.shape[0], 1, dtype=mask.dtype, device=device)], dim=1)
        last = last + 1
        logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None], past_key_values=cache, use_cache=True).logits
    return answers
