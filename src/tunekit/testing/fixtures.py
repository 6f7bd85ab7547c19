"""pytest fixtures for plugin authors: tiny models built on the fly, no downloads.

Enable them in your ``conftest.py``::

    pytest_plugins = ["tunekit.testing.fixtures"]

then ask for ``tiny_gpt2`` / ``tiny_llama`` (model directories, built once per session) or
``tiny_rows`` (prompt/completion rows of a learnable task).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tunekit.testing import build_tiny_model, sft_rows


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 (tied head, Conv1D layers) and its tokenizer, saved to a directory."""
    return build_tiny_model(tmp_path_factory.mktemp("tunekit-models") / "gpt2", arch="gpt2")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (untied head, GQA, chat template) and its tokenizer, saved to a directory."""
    return build_tiny_model(tmp_path_factory.mktemp("tunekit-models") / "llama", arch="llama")


@pytest.fixture
def tiny_rows() -> list[dict[str, Any]]:
    """32 prompt/completion rows of a learnable task (reverse three words)."""
    return sft_rows(32)
