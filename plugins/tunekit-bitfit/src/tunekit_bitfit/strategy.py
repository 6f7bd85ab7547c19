"""BitFit: train only the bias terms (Ben Zaken, Ravfogel and Goldberg, 2022)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from tunekit import ConfigError
from tunekit.errors import Problem
from tunekit.formats import MODEL_DIRECTORY
from tunekit.parts import PartOptions


class BitFitOptions(PartOptions):
    include_norms: bool = Field(default=False, description="Also train the LayerNorm / RMSNorm weights.")
    include_head_bias: bool = Field(default=True, description="Train the output head's bias when it has one.")


class BitFitStrategy:
    """Only bias parameters train; everything else stays bit-for-bit frozen.

    The biases are the model's own weights, so what was tuned is saved as a transformers model
    directory (tunekit's shared ``MODEL_DIRECTORY`` format): plain ``from_pretrained`` loads it,
    and merging has nothing to fold in.
    """

    name: ClassVar[str] = "bitfit"
    description: ClassVar[str] = "BitFit: only the bias terms train (optionally the norm weights)."
    Options: ClassVar[type[BitFitOptions]] = BitFitOptions
    default_learning_rate: ClassVar[float] = 1e-3
    uses_adapters: ClassVar[bool] = False
    trains_tied_weights: ClassVar[bool] = False

    def __init__(self, options: BitFitOptions):
        self.options = options

    def check_quantizer(self, quantizer):
        if quantizer.quantizes_base:
            return f"'bitfit' updates base parameters, which a {quantizer.name!r} base cannot train; use quantizer='none'."
        return None

    def prepare(self, model):
        norm_types = ("LayerNorm", "RMSNorm")
        head = model.get_output_embeddings()
        head_params = {id(p) for p in head.parameters()} if head is not None else set()
        trained = 0
        for module in model.modules():
            is_norm = any(t in type(module).__name__ for t in norm_types)
            for pname, param in module.named_parameters(recurse=False):
                train = pname == "bias" or (self.options.include_norms and is_norm)
                if id(param) in head_params and not self.options.include_head_bias:
                    train = False
                param.requires_grad_(train)
                trained += param.numel() if train else 0
        if trained == 0:
            raise ConfigError([Problem(
                "strategy", f"{type(model).__name__} has no bias parameters for 'bitfit' to train; "
                "use strategy={'name': 'bitfit', 'include_norms': true} or another strategy.",
            )])
        return model

    def save(self, model, directory):
        return MODEL_DIRECTORY.save(model, directory)

    def load(self, base_model, directory):
        return MODEL_DIRECTORY.load(base_model, directory)

    def merge(self, model, tokenizer):
        return MODEL_DIRECTORY.merge(model, tokenizer)
