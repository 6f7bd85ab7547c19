"""The model's KV cache, as tunekit's own forward loops use it (greedy evaluation, a batch's shared prefix).

transformers 5 names the cache argument ``cache`` (older models ``past_key_values``); a peft model
passes keywords through to the model it wraps, whose signature is the one that tells.
"""

from __future__ import annotations

import inspect
from typing import Any


def base_model(model: Any) -> Any:
    """The transformers model under a peft wrapper (its forward passes keywords through), or ``model``."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def forward_params(model: Any) -> dict[str, inspect.Parameter]:
    """The parameters of the transformers model's ``forward`` (empty when it has no inspectable signature)."""
    try:
        return dict(inspect.signature(base_model(model).forward).parameters)
    except (TypeError, ValueError):
        return {}


def cache_keyword(model: Any) -> str:
    """What the model's forward calls its KV cache."""
    return "cache" if "cache" in forward_params(model) else "past_key_values"


def takes_cache(model: Any) -> bool:
    """Whether the model's forward takes a KV cache, an attention mask and position ids by name."""
    params = forward_params(model)
    return {"position_ids", "attention_mask"} <= set(params) and bool({"cache", "past_key_values"} & set(params))


def new_cache(model: Any) -> Any:
    """An empty dynamic cache laid out for the model's config (sliding-window layers where it has them)."""
    from transformers import DynamicCache

    return DynamicCache(config=base_model(model).config)


def plain_layers(cache: Any) -> bool:
    """Whether every layer of ``cache`` is a plain growing KV layer (no sliding window, no linear attention),
    whose rows can be repeated, selected and spliced."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))
