"""Resolve LoRA ``target_modules`` (names or groups) to the exact layers of one model.

peft matches ``target_modules`` by name suffix and crashes on a container such as GPT-2's
``mlp`` ("Target module GPT2MLP is not supported"); here a container is expanded to the
linear layers inside it, and a name that matches nothing is an error that lists the layer
names the model does have.

The groups are found from the model's structure, not from its layer names: the decoder blocks
are the classes the model lists in ``_no_split_modules``; inside a block, the part whose
``forward`` takes an attention mask or position embeddings is ``attention`` and the other parts
with weights are ``mlp`` (see :func:`tunekit.models.inspect.block_parts`). A mixture-of-experts
block in transformers 5 keeps its experts as fused 3-D parameters, not Linear layers; ``mlp`` and
``all-linear`` take them too, as peft ``target_parameters``, so they are never silently skipped.
Routers and one-output gates are not adapted by the groups (name a gate to adapt it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tunekit.errors import ConfigError, Problem
from tunekit.models.inspect import (
    block_parts,
    decoder_blocks,
    fused_expert_parameters,
    is_linear_layer,
    output_head_names,
)

if TYPE_CHECKING:
    import torch

GROUPS = ("all-linear", "attention", "mlp")


@dataclass
class Targets:
    """What LoRA adapts: linear layers by full module name, and fused expert weights by full parameter name."""

    modules: list[str] = field(default_factory=list)
    parameters: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.modules or self.parameters)


def linear_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every LoRA-able layer by full module name, the output head excluded."""
    heads = output_head_names(model)
    return {
        name: module
        for name, module in model.named_modules()
        if name and is_linear_layer(module) and name not in heads
    }


def _is_scalar_gate(module: torch.nn.Module) -> bool:
    """A linear layer with one output (Qwen2-MoE's ``shared_expert_gate``): a gate, not a projection.
    The groups leave it out, as they leave out routers; a rank above 1 cannot fit it anyway."""
    weight = getattr(module, "weight", None)
    out = getattr(module, "out_features", None)
    if out is None and weight is not None and weight.dim() == 2:
        out = weight.shape[-1] if type(module).__name__ == "Conv1D" else weight.shape[0]
    return out == 1


def expert_parameters(model: torch.nn.Module) -> list[str]:
    """Full names of every fused expert weight of ``model`` (empty for a dense model)."""
    return fused_expert_parameters(model)


def _group_prefixes(model: torch.nn.Module) -> dict[str, list[str]]:
    """``{"attention": [...], "mlp": [...]}``: the full module names of each group's block parts."""
    blocks_name, blocks = decoder_blocks(model)
    names = {id(m): n for n, m in model.named_modules()}
    groups: dict[str, list[str]] = {"attention": [], "mlp": []}
    for block in blocks:
        block_name = names.get(id(block), "")
        for child, group in block_parts(block).items():
            groups[group].append(f"{block_name}.{child}" if block_name else child)
    return groups


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def resolve_targets(model: torch.nn.Module, targets: str | list[str]) -> Targets:
    """The layers and fused expert weights ``targets`` selects.

    ``targets`` is a group (``all-linear``, ``attention``, ``mlp``), or a list of names, each
    a layer name suffix (``q_proj``, ``c_attn``), a container (``mlp``, ``experts``) whose linear
    layers and expert weights are all taken, or a fused expert weight's name (``gate_up_proj``);
    groups may be mixed into the list.
    """
    layers = linear_layers(model)
    experts = expert_parameters(model)
    wanted = [targets] if isinstance(targets, str) else list(targets)
    modules: dict[str, None] = {}
    params: dict[str, None] = {}
    for target in wanted:
        found = _resolve_one(model, layers, experts, target)
        if not found:
            suffixes = sorted({n.rsplit(".", 1)[-1] for n in [*layers, *experts]})
            raise ConfigError(
                [
                    Problem(
                        "strategy.target_modules",
                        f"{target!r} matches no linear layer of {type(model).__name__}. "
                        f"Its layers are named: {', '.join(suffixes)}; groups: {', '.join(GROUPS)}.",
                    )
                ]
            )
        modules.update(dict.fromkeys(found.modules))
        params.update(dict.fromkeys(found.parameters))
    return Targets(list(modules), list(params))


def resolve_target_modules(model: torch.nn.Module, targets: str | list[str]) -> list[str]:
    """Full module names of the linear layers ``targets`` selects (see :func:`resolve_targets`,
    which also gives the fused expert weights of a mixture-of-experts model)."""
    return resolve_targets(model, targets).modules


def _resolve_one(
    model: torch.nn.Module, layers: dict[str, torch.nn.Module], experts: list[str], target: str
) -> Targets:
    if target == "all-linear":
        return Targets([n for n, m in layers.items() if not _is_scalar_gate(m)], list(experts))
    if target in ("attention", "mlp"):
        prefixes = _group_prefixes(model)[target]
        found = Targets(
            [n for n, m in layers.items() if _under(n, prefixes) and not _is_scalar_gate(m)],
            [p for p in experts if _under(p.rpartition(".")[0], prefixes)],
        )
        if found or target == "attention":
            return found
        # no decoder blocks were found: fall back to a container named "mlp" below
    matches = [
        name for name, _ in model.named_modules() if name == target or name.endswith("." + target)
    ]
    found = Targets()
    for match in matches:
        if match in layers:
            found.modules.append(match)
        else:  # a container: take every linear layer and expert weight inside it
            found.modules.extend(n for n in layers if n.startswith(match + "."))
            found.parameters.extend(p for p in experts if p.startswith(match + "."))
    found.parameters.extend(p for p in experts if p == target or p.endswith("." + target))
    found.parameters = list(dict.fromkeys(found.parameters))
    return found
