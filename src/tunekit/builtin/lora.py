"""``lora``: low-rank adapters through peft (with DoRA and rsLoRA switches)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from tunekit.hookspecs import Register, hookimpl
from tunekit.parts import PartOptions

if TYPE_CHECKING:
    import torch


class LoraOptions(PartOptions):
    rank: int = Field(default=8, ge=1, description="Rank r of the low-rank update.")
    alpha: float | None = Field(
        default=None, gt=0, description="Scaling numerator lora_alpha; None uses 2 x rank."
    )
    dropout: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description=(
            "Dropout on the adapter input. 0 (the default) skips the dropped copy of every adapted layer's input "
            "that dropout keeps for the backward pass: about a quarter less peak memory and 1.1-1.2x faster in "
            "docs/performance.md. Try 0.05-0.1 to regularise a small data set."
        ),
    )
    target_modules: str | list[str] = Field(
        default="all-linear",
        description="Layers to adapt: a group ('all-linear', 'attention', 'mlp') or a list of "
        "layer or container names ('q_proj', 'c_attn', 'mlp'), resolved on the model itself.",
    )
    use_dora: bool = Field(default=False, description="Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = Field(default=False, description="Rank-stabilised scaling alpha/sqrt(r).")
    bias: Literal["none", "all", "lora_only"] = Field(
        default="none", description="Which biases train along with the adapters."
    )
    modules_to_save: list[str] | None = Field(
        default=None, description="Modules trained in full and saved with the adapter."
    )

    @model_validator(mode="after")
    def _non_empty_targets(self) -> LoraOptions:
        if not self.target_modules:
            raise ValueError("target_modules must name at least one layer or group")
        return self


class LoraStrategy:
    """LoRA adapters on the chosen layers; the base weights stay frozen and unchanged."""

    name: ClassVar[str] = "lora"
    description: ClassVar[str] = "LoRA adapters through peft (rank, alpha, DoRA, rsLoRA, layer groups)."
    Options: ClassVar[type[LoraOptions]] = LoraOptions
    default_learning_rate: ClassVar[float] = 2e-4
    uses_adapters: ClassVar[bool] = True

    def __init__(self, options: LoraOptions):
        self.options = options

    def check_quantizer(self, quantizer: Any) -> str | None:
        return None  # LoRA on a k-bit base is QLoRA

    def peft_config(self, model: torch.nn.Module) -> Any:
        from peft import LoraConfig

        from tunekit.models.targets import resolve_target_modules

        o = self.options
        targets = resolve_target_modules(model, o.target_modules)
        modules = dict(model.named_modules())
        conv1d = any(type(modules[t]).__name__ == "Conv1D" for t in targets)
        return LoraConfig(
            task_type="CAUSAL_LM",
            r=o.rank,
            lora_alpha=o.alpha if o.alpha is not None else 2 * o.rank,  # type: ignore[arg-type]
            lora_dropout=o.dropout,
            target_modules=targets,
            use_dora=o.use_dora,
            use_rslora=o.use_rslora,
            bias=o.bias,
            modules_to_save=o.modules_to_save,
            fan_in_fan_out=conv1d,  # GPT-2's Conv1D stores weights transposed
        )

    def prepare(self, model: torch.nn.Module, *, quantized: bool) -> torch.nn.Module:
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config(model))  # type: ignore[arg-type]


@hookimpl
def register_strategies(register: Register) -> None:
    register(LoraStrategy)
