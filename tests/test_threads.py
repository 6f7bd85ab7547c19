"""training.cpu_threads: torch's CPU threads picked from the load during fit and evaluate, restored after."""

from __future__ import annotations

import pytest
from tests.conftest import quick

from tunekit import ConfigError, TuneConfig, Tuner, hookimpl
from tunekit.plugins import register_plugin
from tunekit.testing import sft_rows
from tunekit.training import threads


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    for name in (*threads.THREAD_ENV, "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("load", "expected"), [(0.0, 4), (0.4, 4), (1.0, 3), (2.6, 1), (9.0, 1)])
def test_auto_uses_the_cores_the_load_leaves_free(four_cores, monkeypatch, load, expected):
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, load, load))
    assert threads.threads_for("auto", "cpu") == expected


def test_auto_shares_the_free_cores_between_the_ranks_of_a_launch(four_cores, monkeypatch):
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.threads_for("auto", "cpu") == 2


def test_auto_leaves_torch_alone_on_a_gpu_or_when_the_user_chose(four_cores, monkeypatch):
    assert threads.threads_for("auto", "cuda") is None
    assert threads.threads_for(None, "cpu") is None
    assert threads.threads_for(3, "cuda") == 3  # a number is a number
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.threads_for("auto", "cpu") is None


def test_the_setting_holds_inside_the_block_and_the_old_one_comes_back():
    import torch

    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    try:
        with threads.cpu_threads(wanted, "cpu") as used:
            assert used == wanted == torch.get_num_threads()
            raise RuntimeError("a failure inside the block")
    except RuntimeError:
        pass
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", [0, -2, "many", 1.5, True, 10**6])
def test_a_bad_thread_count_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="cpu_threads"):
        TuneConfig(model="gpt2", training={"cpu_threads": bad})


def test_fit_and_evaluate_train_with_the_set_threads_and_restore_the_processes(tiny_llama, tmp_path):
    import torch
    from transformers import TrainerCallback

    seen: list[int] = []

    class Threads(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(torch.get_num_threads())

    class Plugin:
        @hookimpl
        def register_trainer_callbacks(self, register):
            register(Threads())

    register_plugin(Plugin(), name="threads-probe")
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    tuner = Tuner(model=str(tiny_llama), strategy="lora", output_dir=str(tmp_path / "run"),
                  training=quick(max_steps=2, cpu_threads=wanted))
    tuner.fit(sft_rows(8))
    assert seen == [wanted, wanted]
    assert torch.get_num_threads() == before
    tuner.evaluate(sft_rows(4))
    assert torch.get_num_threads() == before
