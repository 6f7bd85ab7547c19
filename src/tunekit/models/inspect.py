"""Questions about a model's structure that strategies ask: its parameters, blocks and layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts, counted the way peft counts them.

    Tied parameters count once; a bitsandbytes 4-bit parameter packs two values per byte
    of storage, so it counts as ``numel * 2 * element_size`` (as peft does), which makes the
    figures comparable between a quantized and a plain base.
    """
    trainable = total = 0
    for _, param in model.named_parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n = n * 2 * param.element_size()
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
    """Module names of the output head(s) (``lm_head``), which adapter groups never target."""
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    return {name for name, module in model.named_modules() if module is head and head is not None}


def decoder_blocks(model: torch.nn.Module) -> tuple[str, list[torch.nn.Module]]:
    """The repeated transformer blocks: the ``ModuleList`` holding the most parameters."""
    import torch

    best: tuple[str, list[torch.nn.Module]] = ("", [])
    best_size = -1
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = (name, list(module)), size
    return best
