"""tunekit: fine-tune causal language models with full, head-only or LoRA training.

>>> from tunekit import Tuner
>>> Tuner(model="gpt2", strategy="lora").config.strategy.name
'lora'

``import tunekit`` is light: torch and transformers load only when a model is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunekit.errors import (
    ConfigError,
    DataError,
    HardwareError,
    MissingDependencyError,
    ModelLoadError,
    PluginError,
    TunekitError,
    UnknownPartError,
)
from tunekit.hookspecs import hookimpl
from tunekit.version import __version__

if TYPE_CHECKING:
    from tunekit.comparison import compare
    from tunekit.config import TuneConfig
    from tunekit.results import EvalResult, FitResult
    from tunekit.tuner import Tuner

_LAZY = {
    "Tuner": "tunekit.tuner",
    "TuneConfig": "tunekit.config",
    "FitResult": "tunekit.results",
    "EvalResult": "tunekit.results",
    "compare": "tunekit.comparison",
}

__all__ = [
    "ConfigError",
    "DataError",
    "EvalResult",
    "FitResult",
    "HardwareError",
    "MissingDependencyError",
    "ModelLoadError",
    "PluginError",
    "TuneConfig",
    "Tuner",
    "TunekitError",
    "UnknownPartError",
    "__version__",
    "compare",
    "hookimpl",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tunekit' has no attribute {name!r}")
