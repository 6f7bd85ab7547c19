"""Quantizers: ``none`` (plain weights) and ``bnb-8bit`` / ``bnb-4bit`` through bitsandbytes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from tunekit.errors import MissingDependencyError
from tunekit.hookspecs import Register, hookimpl
from tunekit.parts import NoOptions, PartOptions

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


class NoQuantizer:
    """Load the base with plain weights in the training precision."""

    name: ClassVar[str] = "none"
    description: ClassVar[str] = "Plain weights, no quantization."
    Options: ClassVar[type[NoOptions]] = NoOptions
    quantizes_base: ClassVar[bool] = False

    def __init__(self, options: NoOptions):
        self.options = options

    def load_kwargs(self, compute_dtype: torch.dtype) -> dict[str, Any]:
        return {}

    def prepare_for_training(
        self, model: PreTrainedModel, *, gradient_checkpointing: bool
    ) -> PreTrainedModel:
        return model


def _require_bitsandbytes(name: str) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"quantizer {name!r} needs bitsandbytes >= 0.50: pip install 'bitsandbytes>=0.50' "
            f"({exc})"
        ) from exc


class _BitsAndBytes:
    quantizes_base: ClassVar[bool] = True
    name: ClassVar[str]

    def prepare_for_training(
        self, model: PreTrainedModel, *, gradient_checkpointing: bool
    ) -> PreTrainedModel:
        from peft import prepare_model_for_kbit_training

        # Freezes the base, casts norms to fp32 and, with checkpointing, enables input grads
        # so adapters behind checkpointed blocks still receive gradients.
        return prepare_model_for_kbit_training(  # type: ignore[no-any-return]
            model, use_gradient_checkpointing=gradient_checkpointing
        )


class Bnb8bitOptions(PartOptions):
    threshold: float = Field(
        default=6.0, ge=0, description="LLM.int8() outlier threshold (llm_int8_threshold)."
    )


class Bnb8bitQuantizer(_BitsAndBytes):
    """8-bit (LLM.int8()) base weights through bitsandbytes."""

    name: ClassVar[str] = "bnb-8bit"
    description: ClassVar[str] = "8-bit base weights (LLM.int8()) through bitsandbytes."
    Options: ClassVar[type[Bnb8bitOptions]] = Bnb8bitOptions

    def __init__(self, options: Bnb8bitOptions):
        self.options = options

    def load_kwargs(self, compute_dtype: torch.dtype) -> dict[str, Any]:
        _require_bitsandbytes(self.name)
        from transformers import BitsAndBytesConfig

        config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=self.options.threshold)
        return {"quantization_config": config}


class Bnb4bitOptions(PartOptions):
    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type.")
    double_quant: bool = Field(
        default=True, description="Quantize the quantization constants too (saves ~0.4 bit/param)."
    )
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Dtype of the de-quantized matmuls; 'auto' follows the training precision."
    )


class Bnb4bitQuantizer(_BitsAndBytes):
    """4-bit (NF4 or FP4) base weights through bitsandbytes: the QLoRA base."""

    name: ClassVar[str] = "bnb-4bit"
    description: ClassVar[str] = "4-bit NF4/FP4 base weights through bitsandbytes (QLoRA)."
    Options: ClassVar[type[Bnb4bitOptions]] = Bnb4bitOptions

    def __init__(self, options: Bnb4bitOptions):
        self.options = options

    def load_kwargs(self, compute_dtype: torch.dtype) -> dict[str, Any]:
        _require_bitsandbytes(self.name)
        import torch
        from transformers import BitsAndBytesConfig

        o = self.options
        dtype = compute_dtype if o.compute_dtype == "auto" else getattr(torch, o.compute_dtype)
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=o.quant_type,
            bnb_4bit_use_double_quant=o.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
        return {"quantization_config": config}


@hookimpl
def register_quantizers(register: Register) -> None:
    register(NoQuantizer)
    register(Bnb8bitQuantizer)
    register(Bnb4bitQuantizer)
