"""``full``: full fine-tuning, every parameter trains."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from tunekit.formats import MODEL_DIRECTORY, ModelDirectoryFormat, SavedInFormat
from tunekit.hookspecs import Register, hookimpl
from tunekit.parts import NoOptions

if TYPE_CHECKING:

    import torch


class FullStrategy(SavedInFormat):
    """Every parameter of the model trains.

    >>> FullStrategy(NoOptions()).default_learning_rate
    2e-05
    """

    name: ClassVar[str] = "full"
    description: ClassVar[str] = "Full fine-tuning: every parameter of the model trains."
    Options: ClassVar[type[NoOptions]] = NoOptions
    default_learning_rate: ClassVar[float] = 2e-5
    uses_adapters: ClassVar[bool] = False
    trains_tied_weights: ClassVar[bool] = True  # training tied weights together is what full fine-tuning means
    format: ClassVar[ModelDirectoryFormat] = MODEL_DIRECTORY
    """Saved as a transformers model directory that plain ``from_pretrained`` loads."""

    def __init__(self, options: NoOptions):
        self.options = options

    def check_quantizer(self, quantizer: Any) -> str | None:
        if quantizer.quantizes_base:
            return (
                f"'full' updates every base weight, which a {quantizer.name!r} base cannot hold. "
                "Use strategy='lora' (QLoRA) on a quantized base, or quantizer='none' for full "
                "fine-tuning."
            )
        return None

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        return model


@hookimpl
def register_strategies(register: Register) -> None:
    register(FullStrategy)
