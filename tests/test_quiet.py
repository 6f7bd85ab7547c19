"""``training.progress_bar: false`` silences the libraries too: their progress bars, their deprecation
warnings and their loggers; tunekit's own warnings still show, and everything is restored afterwards."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings

import datasets
import transformers.utils.logging as hf_logging

from tunekit.quiet import quiet_libraries
from tunekit.testing import sft_rows


def _warn(category: type[Warning], module: str) -> None:
    warnings.warn_explicit("noise", category, filename=f"{module}.py", lineno=1, module=module)


def test_library_warnings_and_bars_are_silenced_inside_and_restored_after():
    datasets.enable_progress_bars()
    hf_logging.enable_progress_bar()
    level = logging.getLogger("peft").level
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_libraries():
            assert not datasets.is_progress_bar_enabled() and not hf_logging.is_progress_bar_enabled()
            assert hf_logging.get_verbosity() == logging.ERROR
            assert logging.getLogger("peft").level == logging.ERROR
            _warn(UserWarning, "transformers.trainer")
            _warn(UserWarning, "peft.tuners.lora")
            _warn(DeprecationWarning, "somewhere.else")
            _warn(FutureWarning, "torch.utils")
            _warn(UserWarning, "tunekit.training")  # tunekit's own warnings still reach the user
        assert [str(w.message) for w in seen] == ["noise"] and seen[0].filename == "tunekit.training.py"
        _warn(UserWarning, "transformers.trainer")
        assert len(seen) == 2  # restored: the libraries may warn again
    assert datasets.is_progress_bar_enabled() and hf_logging.is_progress_bar_enabled()
    assert logging.getLogger("peft").level == level
    with quiet_libraries(enabled=False):
        assert datasets.is_progress_bar_enabled()


FIT = """
import sys
from tunekit import Tuner
rows = [dict(r) for r in {rows}]
Tuner(model=sys.argv[1], output_dir=sys.argv[2], training=dict(max_steps=2, batch_size=4, progress_bar={bar})).fit(rows)
"""


def _fit_stderr(model, out, bar: bool) -> str:
    code = FIT.format(rows=json.dumps(sft_rows(8)), bar=bar)
    proc = subprocess.run([sys.executable, "-c", code, str(model), str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def test_a_quiet_fit_prints_no_progress_bar_of_any_library(tiny_llama, tmp_path):
    loud = _fit_stderr(tiny_llama, tmp_path / "loud", bar=True)
    quiet = _fit_stderr(tiny_llama, tmp_path / "quiet", bar=False)
    # by default the libraries' bars show: transformers' weight loading, datasets' map
    assert "Loading weights" in loud and "Map" in loud and "%|" in loud
    assert "%|" not in quiet and "it/s" not in quiet and "warnings.warn" not in quiet, quiet
