"""What a ``tunekit fit`` process loads before its first step, and how it starts (no timings:
scripts/startup_profile.py measures them; docs/performance.md, "Start-up", has the figures)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunekit.testing import sft_rows

ROOT = Path(__file__).resolve().parents[1]

PROBE = r'''
import gc, json, sys
from tunekit import hookimpl
from tunekit.plugins import register_plugin

seen = {}

class Probe:
    @hookimpl
    def register_trainer_callbacks(self, register):
        from transformers import TrainerCallback

        class FirstStep(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                seen.setdefault("modules", sorted(sys.modules))
                seen.setdefault("gc", [gc.isenabled(), gc.get_freeze_count()])

        register(FirstStep())

register_plugin(Probe(), name="probe")
from tunekit.cli import main
code = main(sys.argv[2:])
seen["modules_at_exit"] = sorted(sys.modules)
with open(sys.argv[1], "w") as f:
    json.dump(seen, f)
sys.exit(code)
'''


@pytest.mark.parametrize("strategy", ["lora", "full"])
def test_a_plain_fit_imports_neither_trl_nor_plotting_before_its_first_step(tiny_gpt2, tmp_path, strategy):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft_rows(8)))
    (tmp_path / "run.yaml").write_text(json.dumps({
        "model": str(tiny_gpt2), "strategy": strategy, "training": {"max_steps": 1, "batch_size": 4, "progress_bar": False},
    }))
    report = tmp_path / "seen.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-c", PROBE, str(report), "fit", str(tmp_path / "run.yaml"),
               "--data", str(tmp_path / "train.jsonl"), "--output-dir", str(tmp_path / "run"), "--no-baseline"]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(report.read_text())
    first_step = set(seen["modules"])
    for name in ("trl", "matplotlib", "tensorboard", "torch.utils.tensorboard", "gguf"):
        assert name not in first_step, f"{name} is imported before the first step of a plain {strategy} fit"
    assert "trl" not in seen["modules_at_exit"]  # no built-in objective uses trl
    enabled, frozen = seen["gc"]
    assert enabled and frozen > 0  # the libraries were imported with the collector paused, then frozen


def test_import_training_libraries_leaves_the_collector_as_it_found_it():
    code = (
        "import gc, sys; from tunekit.startup import import_training_libraries\n"
        "gc.disable() if sys.argv[1] == 'off' else None\n"
        "import_training_libraries(); frozen = gc.get_freeze_count(); gc.unfreeze()\n"
        "import_training_libraries()\n"  # the libraries are there now: nothing more is frozen
        "print(gc.isenabled(), frozen > 0, gc.get_freeze_count(), 'transformers.trainer' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    for state, enabled in (("on", "True"), ("off", "False")):
        out = subprocess.run([sys.executable, "-c", code, state], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.split() == [enabled, "True", "0", "True"]


def _profile_script():
    spec = importlib.util.spec_from_file_location("startup_profile", ROOT / "scripts" / "startup_profile.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_profile_script_reads_importtime_output():
    profile = _profile_script()
    stderr = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:        10 |         10 |     bitsandbytes._ops",
        "import time:        20 |         30 |   bitsandbytes",
        "import time:         5 |         35 | peft",
        "some warning a library printed",
        "import time:         7 |          7 | json",
    ])
    rows = profile.parse_importtime(stderr)
    assert rows == [(10, 10, 2, "bitsandbytes._ops"), (20, 30, 1, "bitsandbytes"), (5, 35, 0, "peft"), (7, 7, 0, "json")]
    assert profile.import_chain(rows, "bitsandbytes._ops") == ["peft", "bitsandbytes", "bitsandbytes._ops"]
    assert profile.import_chain(rows, "json") == ["json"]
