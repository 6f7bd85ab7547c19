"""The same user script runs unchanged under torchrun with 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "ddp_fit.py"


def _torchrun(model, run, dump, *extra):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29533", str(SCRIPT), str(model), str(run), str(dump), *extra],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, [json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_two_process_data_parallel_fit(tiny_gpt2, tmp_path):
    proc, ranks = _torchrun(tiny_gpt2, tmp_path / "run", tmp_path / "dump")
    # every rank holds identical weights after training
    assert ranks[0]["weights"] == ranks[1]["weights"]
    result = ranks[0]["result"]
    assert result["steps"] == 3
    # the effective batch is per-device batch x processes x accumulation: 2 x 2 x 2
    assert result["effective_batch_size"] == 8 and result["world_size"] == 2
    # the final evaluation is the same on both ranks (each rank's shard is gathered)
    assert ranks[0]["result"]["eval_loss"] == ranks[1]["result"]["eval_loss"]
    # only the main process printed the progress bar and wrote the run directory
    assert proc.stderr.count("fit:   0%") == 1
    assert json.loads((tmp_path / "run" / "result.json").read_text())["steps"] == 3
    assert (tmp_path / "run" / "model" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_trained_logits_loss_trains_the_same_under_ddp(tiny_llama, tmp_path):
    """tunekit's loss and the model's own, both under DDP with gradient accumulation: the same
    weights (the loss is scaled by the tokens of the whole accumulated batch on every rank)."""
    _, ours = _torchrun(tiny_llama, tmp_path / "ours", tmp_path / "dump-ours", "true")
    _, own = _torchrun(tiny_llama, tmp_path / "own", tmp_path / "dump-own", "false")
    assert ours[0]["weights"].keys() == own[0]["weights"].keys()
    for name, values in ours[0]["weights"].items():
        assert values == pytest.approx(own[0]["weights"][name], rel=1e-4, abs=1e-6), name
    assert ours[0]["result"]["train_loss"] == pytest.approx(own[0]["result"]["train_loss"], rel=1e-5)
