"""Crashes and resume, interrupted saves, non-finite losses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import quick

from tunekit import TunekitError, Tuner
from tunekit.testing import sft_rows

SCRIPT = Path(__file__).parent / "scripts" / "fit_until.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_gpt2, tmp_path):
    import numpy as np

    full = _run(str(tiny_gpt2), str(tmp_path / "full"), str(tmp_path / "full.json"))
    assert full.returncode == 0, full.stderr[-2000:]

    killed = _run(str(tiny_gpt2), str(tmp_path / "crash"), str(tmp_path / "crash.json"), "--kill-at", "5")
    assert killed.returncode == -9  # SIGKILL: no cleanup ran
    checkpoints = sorted(p.name for p in (tmp_path / "crash").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]

    resumed = _run(str(tiny_gpt2), str(tmp_path / "crash"), str(tmp_path / "resumed.json"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "full.json").read_text())
    b = json.loads((tmp_path / "resumed.json").read_text())
    after = [s for s in a["losses"] if int(s) > 4]
    assert after and all(s in b["losses"] for s in after)
    np.testing.assert_allclose([b["losses"][s] for s in after], [a["losses"][s] for s in after], rtol=1e-5)
    assert a["weights"].keys() == b["weights"].keys()
    for name in a["weights"]:
        np.testing.assert_allclose(b["weights"][name], a["weights"][name], rtol=1e-4, atol=1e-6)


def test_sigint_saves_a_checkpoint_and_says_how_to_resume(tiny_gpt2, tmp_path):
    proc = _run(str(tiny_gpt2), str(tmp_path / "run"), str(tmp_path / "r.json"), "--interrupt-at", "3")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "interrupted at step 3" in proc.stdout and "resume=True" in proc.stdout
    assert (tmp_path / "run" / "checkpoint-3").is_dir()
    done = _run(str(tiny_gpt2), str(tmp_path / "run"), str(tmp_path / "r.json"), "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(int(s) for s in json.loads((tmp_path / "r.json").read_text())["losses"]) == [4, 5, 6, 7, 8]


def test_interrupted_checkpoint_save_leaves_the_previous_one_loadable(tiny_gpt2, tmp_path, monkeypatch):
    from tunekit.training import trainer as trainer_module
    from tunekit.training.checkpoints import newest_checkpoint

    original = trainer_module.Trainer._save_optimizer_and_scheduler
    calls = {"n": 0}

    def crash_on_second_save(self, output_dir):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        return original(self, output_dir)

    monkeypatch.setattr(trainer_module.Trainer, "_save_optimizer_and_scheduler", crash_on_second_save)
    tuner = Tuner(model=str(tiny_gpt2), output_dir=str(tmp_path / "run"), training=quick(max_steps=6, save_steps=2))
    with pytest.raises(OSError, match="disk full"):
        tuner.fit(sft_rows(16))
    # the half-written checkpoint-4 never took the name of a checkpoint
    assert newest_checkpoint(tmp_path / "run").name == "checkpoint-2"
    assert not (tmp_path / "run" / "checkpoint-4").exists()
    monkeypatch.setattr(trainer_module.Trainer, "_save_optimizer_and_scheduler", original)
    result = Tuner(model=str(tiny_gpt2), output_dir=str(tmp_path / "run"), training=quick(max_steps=6, save_steps=2)).fit(sft_rows(16), resume=True)
    assert result.steps == 6 and [p.step for p in result.loss_history][0] == 3


@pytest.mark.parametrize("trained_logits_only", [False, True])  # the model's own loss, and tunekit's
def test_non_finite_loss_stops_the_run_naming_step_and_checkpoint(tiny_gpt2, tmp_path, trained_logits_only):
    from tunekit.training.trainer import NonFiniteLossError

    training = quick(max_steps=6, save_steps=2, trained_logits_only=trained_logits_only)
    tuner = Tuner(model=str(tiny_gpt2), strategy="full", output_dir=str(tmp_path / "run"), training=training)
    model = tuner.model
    step = {"n": 0}

    def poison(module, args, output):  # from the third training step on, the logits and any loss are NaN
        # a step whose batch shares its prompt prefix runs the prefix first, with no logits kept: not counted
        if module.training and output.logits.numel():
            step["n"] += 1
            if step["n"] >= 3:
                output.logits = output.logits * float("nan")
                if output.loss is not None:  # the model's own loss
                    output.loss = output.loss * float("nan")
        return output

    model.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError, match=r"became nan at step 3; the last good checkpoint is .*checkpoint-2"):
        tuner.fit(sft_rows(32))
    assert isinstance(NonFiniteLossError("x"), TunekitError)


def test_overwrite_never_deletes_a_directory_tunekit_did_not_write(tiny_gpt2, tmp_path):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    tuner = Tuner(model=str(tiny_gpt2), output_dir=str(precious), training=quick(max_steps=1))
    with pytest.raises(TunekitError, match="holds files tunekit did not write.*notes.txt"):
        tuner.fit(sft_rows(4), overwrite=True)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_interrupted_save_keeps_the_previous_save(tiny_gpt2, tmp_path):
    tuner = Tuner(model=str(tiny_gpt2), output_dir=str(tmp_path / "run"), training=quick(max_steps=1))
    tuner.fit(sft_rows(4))
    target = tuner.save(tmp_path / "adapter")
    before = (target / "adapter_model.safetensors").read_bytes()

    class Boom(RuntimeError):
        pass

    def broken_save(*args, **kwargs):
        raise Boom("killed mid-save")

    original = tuner.tokenizer.save_pretrained
    tuner.tokenizer.save_pretrained = broken_save  # the model files are written, then the crash
    try:
        with pytest.raises(Boom):
            tuner.save(target, overwrite=True)
    finally:
        tuner.tokenizer.save_pretrained = original
    assert (target / "adapter_model.safetensors").read_bytes() == before
    assert not list(tmp_path.glob(".tunekit-*"))  # no staging debris beside it
    Tuner.load(target)  # the previous save still loads
