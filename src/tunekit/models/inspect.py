"""Questions about a model's structure that strategies ask: its parameters, blocks and layers."""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_ATTENTION_INPUTS = frozenset(
    {"attention_mask", "position_embeddings", "past_key_values", "past_key_value", "layer_past", "encoder_hidden_states"}
)
"""Arguments only an attention module's ``forward`` takes (a feed-forward module takes the hidden states alone)."""


def weight_count(param: torch.Tensor) -> int:
    """The number of weights ``param`` holds, whatever its storage.

    A bitsandbytes 4-bit parameter (``Params4bit``) is stored packed: its ``numel()`` is the number of
    storage elements (two 4-bit values per byte of ``quant_storage``), not of weights. Its
    ``quant_state.shape`` is the logical shape; without a quant state the packing is undone as
    ``numel * 2 * element_size`` (peft's formula). Everything else counts ``numel()``.

    >>> import torch
    >>> weight_count(torch.zeros(3, 4))
    12
    """
    if type(param).__name__ != "Params4bit" or not getattr(param, "bnb_quantized", True):
        return int(param.numel())
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    if shape is not None:
        return int(math.prod(shape))
    return int(param.numel()) * 2 * int(param.element_size())


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` weight counts: what fit reports, compare tabulates and preflight sums.

    Tied parameters count once; a 4-bit parameter counts its logical number of weights
    (:func:`weight_count`), so the figures of a quantized and a plain base are the same.
    """
    trainable = total = 0
    for _, param in model.named_parameters():
        n = weight_count(param)
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def is_linear_layer(module: torch.nn.Module) -> bool:
    """Whether LoRA can wrap ``module``: a torch/bitsandbytes Linear or GPT-2's Conv1D."""
    import torch

    if isinstance(module, torch.nn.Linear):  # includes bitsandbytes' Linear4bit / Linear8bitLt
        return True
    return type(module).__name__ == "Conv1D"


def output_head_names(model: torch.nn.Module) -> set[str]:
    """Module names of the output head(s) (``lm_head``, or a classifier's ``score``), which adapter
    groups never target."""
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    found = classification_head(model)
    heads = {id(m) for m in (head, found[1] if found else None) if m is not None}
    return {name for name, module in model.named_modules() if id(module) in heads}


CLASSIFICATION_HEADS = ("score", "classifier")
"""Attribute names transformers' ``*ForSequenceClassification`` models give their new head."""


def is_sequence_classifier(model: torch.nn.Module) -> bool:
    """Whether ``model`` (or the transformers model under a peft wrapper) is a ``*ForSequenceClassification``."""
    return any(type(m).__name__.endswith("ForSequenceClassification") for m in model.modules())


def classification_head(model: torch.nn.Module) -> tuple[str, torch.nn.Module] | None:
    """``(name, module)`` of a sequence classifier's head (``score`` for decoder models), else None."""
    for module in model.modules():
        if type(module).__name__.endswith("ForSequenceClassification"):
            for attr in CLASSIFICATION_HEADS:
                head = getattr(module, attr, None)
                if head is not None:
                    return attr, head
    return None


def _no_split_classes(model: torch.nn.Module) -> set[str]:
    """The class names in the (first) transformers model's ``_no_split_modules``, under any wrapper."""
    for module in model.modules():
        names = getattr(module, "_no_split_modules", None)
        if names:
            return set(names)
    return set()


def decoder_blocks(model: torch.nn.Module) -> tuple[str, list[torch.nn.Module]]:
    """The repeated transformer blocks, and the name of the module that holds them.

    The blocks are the instances of the classes the model lists in ``_no_split_modules`` (the
    unit transformers itself never splits between devices), e.g. ``LlamaDecoderLayer``,
    ``GPT2Block``; where several containers hold such blocks (a vision tower and a decoder),
    the one with the most parameters. A model without ``_no_split_modules`` falls back to the
    ``ModuleList`` holding the most parameters.
    """
    import torch

    classes = _no_split_classes(model)
    by_parent: dict[str, list[torch.nn.Module]] = {}
    if classes:
        inside: list[str] = []
        for name, module in model.named_modules():
            if type(module).__name__ not in classes or any(name.startswith(p + ".") for p in inside):
                continue
            inside.append(name)
            by_parent.setdefault(name.rpartition(".")[0], []).append(module)
    if not by_parent:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
                by_parent[name] = list(module)
    if not by_parent:
        return "", []

    def size(item: tuple[str, list[torch.nn.Module]]) -> int:
        return sum(p.numel() for block in item[1] for p in block.parameters())

    return max(by_parent.items(), key=size)


def fused_expert_parameters(module: torch.nn.Module) -> list[str]:
    """Names (relative to ``module``) of the fused expert weights under it.

    transformers 5 stores a mixture-of-experts layer's experts as one 3-D parameter per
    projection (``experts.gate_up_proj`` of shape ``(experts, out, in)``), not as Linear layers;
    LoRA reaches them through peft's ``target_parameters``. A router is a 2-D weight and not
    among them.
    """
    found = []
    for name, sub in module.named_modules():
        if is_linear_layer(sub):
            continue
        for pname, param in sub.named_parameters(recurse=False):
            if param.dim() == 3:
                found.append(f"{name}.{pname}" if name else pname)
    return found


def block_parts(block: torch.nn.Module) -> dict[str, str]:
    """Which direct children of a decoder block are its attention and which its feed-forward part.

    A child whose ``forward`` takes an attention input (``attention_mask``, ``position_embeddings``,
    a key/value cache) is attention; any other child with linear layers or fused expert weights is
    the feed-forward part (``mlp``), a mixture-of-experts block included. Norms, dropouts and a
    linear layer sitting directly in the block belong to neither group. Returns
    ``{child name: "attention" | "mlp"}``.
    """
    parts: dict[str, str] = {}
    for name, child in block.named_children():
        if is_linear_layer(child):
            continue
        has_weights = any(is_linear_layer(m) for m in child.modules()) or bool(fused_expert_parameters(child))
        if not has_weights:
            continue
        forward = getattr(child, "forward", None)
        try:
            accepted = set(inspect.signature(forward).parameters) if forward is not None else set()
        except (TypeError, ValueError):
            accepted = set()
        parts[name] = "attention" if accepted & _ATTENTION_INPUTS else "mlp"
    return parts
