"""The example plugin packages in plugins/, installed for a test without touching the environment.

``pip install --no-deps --target`` puts a package (and its entry points) into a temporary folder
once per session; the ``shout_reward_plugin`` fixture puts that folder on ``sys.path`` and on
``PYTHONPATH`` (so a ``tunekit`` subprocess sees it too) for one test, and takes it off after.
Use it from a test module with ``from tests.plugin_packages import shout_reward_plugin  # noqa: F401``.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
SHOUT = PLUGINS / "tunekit-shout-reward"


def install_into(package: Path, target: Path) -> Path:
    """``pip install --no-deps`` ``package`` into ``target`` (never resolving ``tunekit`` from PyPI)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "-q", "install", "--no-deps", "--no-build-isolation", "--target", str(target), str(package)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    return target


_INSTALLED: dict[Path, Path] = {}


def installed(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder ``package`` is installed into, installing it on first use in this session."""
    if package not in _INSTALLED:
        _INSTALLED[package] = install_into(package, tmp_path_factory.mktemp("site") / package.name)
    return _INSTALLED[package]


@pytest.fixture
def shout_reward_plugin(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """tunekit-shout-reward installed (its ``shout`` reward found through its entry point) for one test;
    yields the folder it is installed in."""
    from tunekit.plugins import reset_plugins

    folder = installed(SHOUT, tmp_path_factory)
    target = str(folder)
    monkeypatch.syspath_prepend(target)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (target, os.environ.get("PYTHONPATH")) if p))
    importlib.invalidate_caches()
    reset_plugins()
    yield folder
    monkeypatch.undo()
    for module in [m for m in sys.modules if m.split(".")[0] == "tunekit_shout_reward"]:
        del sys.modules[module]
    importlib.invalidate_caches()
    reset_plugins()
