"""The save formats strategies share: a peft adapter directory and a transformers model directory.

A strategy owns how what it trained is written and read back (``Strategy.save`` / ``load`` /
``merge``); most strategies write one of these two formats, so they compose one of the objects
here instead of writing their own. The files are what other tools load:

- :data:`PEFT_ADAPTER` (format ``"adapter"``): peft's ``adapter_config.json`` +
  ``adapter_model.safetensors``, reloaded onto the original base with
  ``peft.PeftModel.from_pretrained``, merged with the verified merge of :mod:`tunekit.merging`.
- :data:`MODEL_DIRECTORY` (format :data:`STANDALONE`, ``"full"``): a transformers model
  directory (``config.json`` + ``model.safetensors``) that ``AutoModelForCausalLM.from_pretrained``
  loads; it is its own base, so loading it needs nothing more and merging changes nothing.

A strategy written before ``save``/``load``/``merge`` existed (the first form of plugin API 1)
is completed by :func:`as_strategy`, which the facade asks for every strategy.

>>> class MyAdapterStrategy:  # prepare returns a peft.PeftModel; saving and loading are peft's
...     def save(self, model, directory):
...         return PEFT_ADAPTER.save(model, directory)
>>> MODEL_DIRECTORY.format, PEFT_ADAPTER.format
('full', 'adapter')
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from tunekit.parts import Strategy

log = logging.getLogger(__name__)

STANDALONE = "full"
"""The format of a save that is a complete transformers model directory. ``Tuner.load`` loads such a
save as the base itself; a save in any other format is loaded onto the original base model by the
strategy's ``load``. A merged model (``Tuner.save_merged``) is always saved in this format."""


@dataclass(frozen=True)
class PeftAdapterFormat:
    """Save / load / merge for strategies whose ``prepare`` returns a ``peft.PeftModel``."""

    format: str = "adapter"

    def save(self, model: torch.nn.Module, directory: str | Path) -> str:
        """Write the adapter (``adapter_config.json`` + ``adapter_model.safetensors``); return the format."""
        config = getattr(model, "peft_config", {}).get("default")
        # New tokens (data.add_tokens) are trained and saved as peft's token adapter, whose rows replace the
        # resized embedding's: saving the whole resized embedding as well (peft's "auto") would add
        # vocabulary x width weights to every adapter for nothing.
        tokens_only = getattr(config, "trainable_token_indices", None) is not None
        model.save_pretrained(str(directory), **({"save_embedding_layers": False} if tokens_only else {}))  # type: ignore[operator]
        return self.format

    def load(self, base_model: torch.nn.Module, directory: str | Path) -> torch.nn.Module:
        """The saved adapter on ``base_model``, trainable (so training can continue from it)."""
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, str(directory), is_trainable=True)  # type: ignore[arg-type]

    def merge(self, model: torch.nn.Module, tokenizer: Any) -> torch.nn.Module:
        """The adapters folded into the base, verified on probe inputs (:func:`tunekit.merging.verified_merge`)."""
        from tunekit.merging import verified_merge

        return verified_merge(model, tokenizer)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ModelDirectoryFormat:
    """Save / load / merge for strategies that train the model's own weights in place."""

    format: str = STANDALONE

    def save(self, model: torch.nn.Module, directory: str | Path) -> str:
        """Write a transformers model directory (``config.json`` + ``model.safetensors``); return the format."""
        model.save_pretrained(str(directory))  # type: ignore[operator]
        return self.format

    def load(self, base_model: torch.nn.Module, directory: str | Path) -> torch.nn.Module:
        """A standalone save is loaded as the base itself (see :data:`STANDALONE`): nothing to add."""
        return base_model

    def merge(self, model: torch.nn.Module, tokenizer: Any) -> torch.nn.Module:
        """Nothing to fold in: the tuned weights are the model's own."""
        return model


PEFT_ADAPTER = PeftAdapterFormat()
MODEL_DIRECTORY = ModelDirectoryFormat()


class SavedInFormat:
    """``save`` / ``load`` / ``merge`` of a strategy that writes one of the shared formats.

    A strategy sets ``format`` (:data:`PEFT_ADAPTER` or :data:`MODEL_DIRECTORY`) and mixes this
    in; the three methods are then the format's, written once for every such strategy.
    """

    format: ClassVar[PeftAdapterFormat | ModelDirectoryFormat]

    def save(self, model: torch.nn.Module, directory: Path) -> str:
        return self.format.save(model, directory)

    def load(self, base_model: torch.nn.Module, directory: Path) -> torch.nn.Module:
        return self.format.load(base_model, directory)

    def merge(self, model: torch.nn.Module, tokenizer: Any) -> torch.nn.Module:
        return self.format.merge(model, tokenizer)


# -- strategies written for the first protocol -------------------------------------------------------
class _FirstProtocolStrategy:
    """A strategy written before ``save``/``load``/``merge``, completed the way tunekit saved it then:
    a peft adapter when ``uses_adapters``, else a transformers model directory."""

    def __init__(self, strategy: Any, quantized: bool):
        self._strategy = strategy
        self._quantized = quantized
        self._format = PEFT_ADAPTER if getattr(strategy, "uses_adapters", False) else MODEL_DIRECTORY
        self.trains_tied_weights = bool(getattr(strategy, "trains_tied_weights", False))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._strategy, name)

    def prepare(self, model: Any) -> Any:
        import inspect

        try:
            takes_quantized = "quantized" in inspect.signature(self._strategy.prepare).parameters
        except (TypeError, ValueError):
            takes_quantized = False
        if takes_quantized:
            return self._strategy.prepare(model, quantized=self._quantized)
        return self._strategy.prepare(model)

    def save(self, model: Any, directory: Path) -> str:
        return self._format.save(model, directory)

    def load(self, base_model: Any, directory: Path) -> Any:
        return self._format.load(base_model, directory)

    def merge(self, model: Any, tokenizer: Any) -> Any:
        return self._format.merge(model, tokenizer)


def as_strategy(strategy: Any, *, quantized: bool = False) -> Strategy:
    """``strategy`` itself when it has ``save``, ``load`` and ``merge``; otherwise (a strategy written
    for plugin API 1 before they existed) a wrapper that supplies them as tunekit did then (a peft
    adapter when ``uses_adapters``, else a transformers model directory) and passes ``quantized``
    to its ``prepare(model, *, quantized)``.

    >>> class Old:
    ...     uses_adapters = False
    ...     def prepare(self, model, *, quantized):
    ...         return ("prepared", quantized)
    >>> as_strategy(Old(), quantized=True).prepare("m")
    ('prepared', True)
    >>> as_strategy(Old()).merge("m", None)
    'm'
    """
    if all(callable(getattr(strategy, name, None)) for name in ("save", "load", "merge")):
        return strategy  # type: ignore[no-any-return]
    return _FirstProtocolStrategy(strategy, quantized)  # type: ignore[return-value]
