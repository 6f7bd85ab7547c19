"""The module the ``tunekit`` entry point names: it declares the plugin API and registers the parts."""

from __future__ import annotations

from tunekit import hookimpl
from tunekit_bitfit.sharegpt import ShareGPTAdapter
from tunekit_bitfit.strategy import BitFitStrategy

TUNEKIT_API_VERSION = 1


@hookimpl
def register_strategies(register):
    register(BitFitStrategy)


@hookimpl
def register_dataset_adapters(register):
    register(ShareGPTAdapter)
