"""Resolve LoRA ``target_modules`` (names or groups) to the exact layers of one model.

peft matches ``target_modules`` by name suffix and crashes on a container such as GPT-2's
``mlp`` ("Target module GPT2MLP is not supported"); here a container is expanded to the
linear layers inside it, groups are resolved from the module tree of the actual model
(so they work for any architecture), and a name that matches nothing is an error that
lists the layer names the model does have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunekit.errors import ConfigError, Problem
from tunekit.models.inspect import is_linear_layer, output_head_names

if TYPE_CHECKING:
    import torch

GROUPS = ("all-linear", "attention", "mlp")
_ATTENTION_WORDS = ("attn", "attention")
_MLP_WORDS = ("mlp", "ffn", "feed_forward", "feedforward")


def linear_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every LoRA-able layer by full module name, the output head excluded."""
    heads = output_head_names(model)
    return {
        name: module
        for name, module in model.named_modules()
        if name and is_linear_layer(module) and name not in heads
    }


def _in_group(name: str, words: tuple[str, ...]) -> bool:
    parents = name.split(".")[:-1]
    return any(word in part.lower() for part in parents for word in words)


def resolve_target_modules(model: torch.nn.Module, targets: str | list[str]) -> list[str]:
    """Full module names of the layers ``targets`` selects.

    ``targets`` is a group (``all-linear``, ``attention``, ``mlp``), or a list of names, each
    a layer name suffix (``q_proj``, ``c_attn``) or a container (``mlp``) whose linear layers
    are all taken; groups may be mixed into the list.
    """
    layers = linear_layers(model)
    wanted = [targets] if isinstance(targets, str) else list(targets)
    chosen: dict[str, None] = {}
    for target in wanted:
        found = _resolve_one(model, layers, target)
        if not found:
            suffixes = sorted({n.rsplit(".", 1)[-1] for n in layers})
            raise ConfigError(
                [
                    Problem(
                        "strategy.target_modules",
                        f"{target!r} matches no linear layer of {type(model).__name__}. "
                        f"Its layers are named: {', '.join(suffixes)}; groups: {', '.join(GROUPS)}.",
                    )
                ]
            )
        chosen.update(dict.fromkeys(found))
    return list(chosen)


def _resolve_one(model: torch.nn.Module, layers: dict[str, torch.nn.Module], target: str) -> list[str]:
    if target == "all-linear":
        return list(layers)
    if target == "attention":
        return [n for n in layers if _in_group(n, _ATTENTION_WORDS)]
    if target == "mlp":
        exact = [n for n in layers if _in_group(n, _MLP_WORDS) and not _in_group(n, _ATTENTION_WORDS)]
        if exact:
            return exact
    matches = [
        name for name, _ in model.named_modules() if name == target or name.endswith("." + target)
    ]
    found: list[str] = []
    for match in matches:
        if match in layers:
            found.append(match)
        else:  # a container: take every linear layer inside it
            found.extend(n for n in layers if n.startswith(match + "."))
    return found
