"""The example plugin package in plugins/: installed with pip, seen everywhere, gone when uninstalled.

This test changes the test environment (pip install / uninstall) and restores it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tunekit import UnknownPartError

PACKAGE = Path(__file__).resolve().parents[1] / "plugins" / "tunekit-bitfit"


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True, capture_output=True, text=True, timeout=600)


def _cli(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "tunekit.cli", *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def installed_plugin():
    from tunekit.plugins import reset_plugins

    # --no-deps: the `tunekit` requirement is this checkout, never the unrelated PyPI project
    _pip("install", "--no-deps", "--no-build-isolation", str(PACKAGE))
    reset_plugins()
    try:
        yield
    finally:
        _pip("uninstall", "-y", "tunekit-bitfit")
        reset_plugins()


@pytest.mark.slow
def test_installed_plugin_is_seen_by_tuner_compare_and_cli_then_gone(installed_plugin, tiny_gpt2, tmp_path):
    from tunekit import Tuner, compare
    from tunekit.plugins import get_registry, reset_plugins
    from tunekit.testing import sft_rows

    assert get_registry("strategy").get("bitfit").plugin.startswith("tunekit-bitfit 0.1.0")
    listing = _cli("plugins", "-v")
    assert "bitfit" in listing and "sharegpt" in listing and "tunekit-bitfit 0.1.0" in listing
    assert "include_norms = False" in listing  # options with their defaults and descriptions

    result = Tuner(model=str(tiny_gpt2), strategy="bitfit", output_dir=str(tmp_path / "r"), training={"max_steps": 2, "progress_bar": False}).fit(sft_rows(8))
    assert 0 < result.trainable_params < result.total_params

    report = compare(model=str(tiny_gpt2), candidates=["bitfit", "lora"], train=sft_rows(8), budget={"max_steps": 2}, output_dir=str(tmp_path / "cmp"))
    rows = {c.name: c for c in report.candidates}
    assert rows["bitfit"].status == "ok", rows["bitfit"].error_message
    assert rows["bitfit"].runs[0].trainable_params == result.trainable_params

    # the plugin's own test suite, written with tunekit.testing, passes against this tunekit
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PACKAGE / "tests")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]

    _pip("uninstall", "-y", "tunekit-bitfit")
    reset_plugins()
    with pytest.raises(UnknownPartError, match="unknown strategy 'bitfit'"):
        Tuner(model=str(tiny_gpt2), strategy="bitfit")
    assert "bitfit" not in _cli("plugins")
    _pip("install", "--no-deps", "--no-build-isolation", str(PACKAGE))  # the fixture uninstalls it again
