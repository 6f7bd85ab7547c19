from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tunekit.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "gpt2", arch="gpt2")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tunekit.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "llama", arch="llama")


@pytest.fixture(params=["gpt2", "llama"])
def tiny_model(request: pytest.FixtureRequest, tiny_gpt2: Path, tiny_llama: Path) -> Path:
    return tiny_gpt2 if request.param == "gpt2" else tiny_llama


@pytest.fixture(autouse=True)
def _fresh_plugins():
    from tunekit.plugins import reset_plugins

    reset_plugins()
    yield
    reset_plugins()


def quick(**training) -> dict:
    """Training options for fast tests."""
    return {"max_steps": 6, "batch_size": 8, "logging_steps": 1, "progress_bar": False, **training}
