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


def snapshot(path: str | os.PathLike[str]) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``path`` (directories map to ``"dir"``, symlinks
    to ``"link -> target"``); ``{}`` when nothing is there. Compare two snapshots to prove that an
    action changed nothing on disk."""
    import hashlib

    root = Path(path)
    if not root.exists() and not root.is_symlink():
        return {}
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in dirnames:
            full = Path(dirpath) / name
            rel = os.path.relpath(full, root)
            out[rel + os.sep] = f"link -> {os.readlink(full)}" if full.is_symlink() else "dir"
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = os.path.relpath(full, root)
            if full.is_symlink():
                out[rel] = f"link -> {os.readlink(full)}"
            else:
                out[rel] = hashlib.sha256(full.read_bytes()).hexdigest()
    return out
