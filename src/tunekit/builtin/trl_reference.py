"""The reference model of trl's preference and RL trainers, as tunekit wants it: no second copy with LoRA.

trl's ``DPOTrainer`` and ``GRPOTrainer`` give a ``PeftModel`` a frozen ``"ref"`` copy of its adapter to
compute the reference log-probabilities with. A fresh adapter (every LoRA ``B`` still zero) changes
nothing, so its copy is the base itself: :class:`AdapterReference` drops the copy and trl falls back to
the base with the adapter disabled. A continued adapter (an SFT run, then DPO) keeps the copy: the model
training starts from is then the reference, as the SFT -> DPO recipe wants. The copy is removed when
training ends, so what ``fit`` saves and merges is the one trained adapter.
"""

from __future__ import annotations

import copy
from typing import Any

REFERENCE_ADAPTER = "ref"
"""The name trl gives the frozen copy of the adapter."""


def adapter_is_fresh(model: Any) -> bool:
    """Whether every LoRA ``B`` matrix of a peft model's default adapter is still zero: it changes nothing yet."""
    weights = [p for name, p in model.named_parameters() if "lora_B" in name and ".default" in name]
    return bool(weights) and all(not bool(p.detach().any()) for p in weights)


def has_reference_adapter(model: Any) -> bool:
    return REFERENCE_ADAPTER in (getattr(model, "peft_config", None) or {})


class AdapterReference:
    """Mixed in before trl's trainer class: the adapter-disabled base is the reference of a fresh adapter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model = self.model  # type: ignore[attr-defined]
        if has_reference_adapter(model) and adapter_is_fresh(model):
            model.delete_adapter(REFERENCE_ADAPTER)
            model.set_adapter("default")

    def train(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().train(*args, **kwargs)  # type: ignore[misc]
        finally:
            if has_reference_adapter(self.model):  # type: ignore[attr-defined]
                self.model.delete_adapter(REFERENCE_ADAPTER)  # type: ignore[attr-defined]


def frozen_copy(model: Any, *, even_with_adapters: bool = False) -> Any:
    """The reference of a model that trains its own weights (full, head): a frozen copy of it as training
    starts. A peft model needs none (None: its adapter is disabled instead, see :class:`AdapterReference`)
    unless ``even_with_adapters`` (dpo's ``reference: copy``, which the memory benchmark compares with)."""
    if hasattr(model, "peft_config"):
        if not even_with_adapters:
            return None
        # the starting model as a plain transformers model (trl patches the reference's LM head, which a
        # PeftModel wrapper hides): the adapter folded in, which for a fresh one changes nothing
        ref = copy.deepcopy(model).merge_and_unload()
    else:
        ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()
