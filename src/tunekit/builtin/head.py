"""``head``: head-only transfer learning, optionally with the last N transformer blocks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from tunekit.errors import ConfigError, Problem
from tunekit.formats import MODEL_DIRECTORY, ModelDirectoryFormat, SavedInFormat
from tunekit.hookspecs import Register, hookimpl
from tunekit.models.inspect import classification_head, decoder_blocks
from tunekit.parts import PartOptions

if TYPE_CHECKING:

    import torch


class HeadOptions(PartOptions):
    last_n_blocks: int = Field(
        default=0, ge=0, description="Also train the last N transformer blocks (0: the head only)."
    )


class HeadStrategy(SavedInFormat):
    """Only the output head trains (and the last ``last_n_blocks`` blocks when asked).

    The head is the language-model head, or a sequence classifier's new head (``score``,
    with ``objective='classify'``).

    When the head shares its weight with the input embeddings (GPT-2 and many small models
    tie them), the head is untied first: training it must not silently train the
    embeddings too. The untied head is saved as its own tensor, with
    ``tie_word_embeddings=False`` in the saved config, so a plain transformers load
    reproduces the tuned model.
    """

    name: ClassVar[str] = "head"
    description: ClassVar[str] = (
        "Head-only transfer learning: only the output head trains (optionally the last N "
        "blocks); a head tied to the embeddings is untied first."
    )
    Options: ClassVar[type[HeadOptions]] = HeadOptions
    default_learning_rate: ClassVar[float] = 5e-4
    uses_adapters: ClassVar[bool] = False
    trains_tied_weights: ClassVar[bool] = False  # a tied head is untied first
    format: ClassVar[ModelDirectoryFormat] = MODEL_DIRECTORY
    """Saved as a transformers model directory that plain ``from_pretrained`` loads."""

    def __init__(self, options: HeadOptions):
        self.options = options

    def check_quantizer(self, quantizer: Any) -> str | None:
        if quantizer.quantizes_base:
            # transformers' Trainer refuses to train a quantized model without adapters, and the
            # blocks (last_n_blocks) would be quantized weights that cannot be updated anyway.
            return (
                f"'head' cannot train on a {quantizer.name!r} base: only adapters can be trained on "
                "top of quantized weights. Use quantizer='none' (the head is small), or "
                "strategy='lora' (QLoRA)."
            )
        return None

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        import torch

        for param in model.parameters():
            param.requires_grad_(False)
        head = model.get_output_embeddings()  # type: ignore[operator]
        embeddings = model.get_input_embeddings()  # type: ignore[operator]
        task_head = classification_head(model)
        if task_head is not None:  # a sequence classifier: its new head is the one to train
            head = task_head[1]
        if head is None:
            raise ConfigError([Problem("strategy", f"{type(model).__name__} has no output head to train")])
        if embeddings is not None and head.weight is embeddings.weight:
            head.weight = torch.nn.Parameter(embeddings.weight.detach().clone())
            _untie_in_config(model)
        for param in head.parameters():
            param.requires_grad_(True)
        n = self.options.last_n_blocks
        if n:
            _, blocks = decoder_blocks(model)
            if n > len(blocks):
                raise ConfigError(
                    [Problem("strategy.last_n_blocks", f"the model has only {len(blocks)} blocks (got {n})")]
                )
            for block in blocks[-n:]:
                for param in block.parameters():
                    param.requires_grad_(True)
        return model


def _untie_in_config(model: torch.nn.Module) -> None:
    config: Any = model.config
    config.tie_word_embeddings = False
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else None
    if text_config is not None and text_config is not config:
        text_config.tie_word_embeddings = False


@hookimpl
def register_strategies(register: Register) -> None:
    register(HeadStrategy)
