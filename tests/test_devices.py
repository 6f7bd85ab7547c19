"""A model used outside the Trainer lives on the process's device (accelerate's PartialState().device).

No GPU here: PartialState is replaced by one whose device is ``meta`` (a device that is not the CPU
and that every torch has), so a model left on the CPU shows.
"""

from __future__ import annotations

import accelerate
import pytest
import torch

from tunekit import Tuner
from tunekit.testing import sft_rows


class _MetaState:
    device = torch.device("meta")


@pytest.fixture
def meta_device(monkeypatch):
    monkeypatch.setattr(accelerate, "PartialState", _MetaState)
    return torch.device("meta")


def _devices(model) -> set[str]:
    return {p.device.type for p in model.parameters()} | {b.device.type for b in model.buffers()}


def test_the_process_device_is_partial_states(meta_device):
    from tunekit.training.distributed import process_device

    assert process_device() == meta_device


@pytest.mark.parametrize("strategy", ["lora", "full", "head"])
def test_the_model_is_loaded_onto_the_process_device(tiny_gpt2, meta_device, strategy):
    tuner = Tuner(model=str(tiny_gpt2), strategy=strategy)
    assert _devices(tuner.model) == {"meta"}


@pytest.mark.filterwarnings("ignore:for base_model:UserWarning")  # loading into meta weights copies nothing
def test_a_loaded_adapter_is_on_the_process_device(tiny_gpt2, tmp_path, monkeypatch):
    Tuner(model=str(tiny_gpt2), strategy={"name": "lora", "rank": 4}).save(tmp_path / "saved")
    monkeypatch.setattr(accelerate, "PartialState", _MetaState)
    loaded = Tuner.load(tmp_path / "saved")
    assert _devices(loaded.model) == {"meta"}


def test_a_quantized_load_is_placed_at_load_time(tiny_gpt2, monkeypatch):
    """bitsandbytes weights cannot be moved after loading: the device goes in device_map."""
    import transformers

    from tunekit.models.loading import ModelSource, load_model

    seen: dict = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(path, **kwargs):
        seen.update(kwargs)
        kwargs.pop("quantization_config")
        kwargs.pop("device_map")
        return real(path, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    device = torch.device("cpu")
    model = load_model(ModelSource("local", str(tiny_gpt2)), dtype=torch.float32, extra_kwargs={"quantization_config": object()}, device=device)
    assert seen["device_map"] == {"": device}
    assert _devices(model) == {"cpu"}


def test_preflight_measures_the_device_the_model_is_on(tiny_gpt2, meta_device, monkeypatch):
    from tunekit import preflight as pf

    seen = {}

    def fake_estimate(model, tokenized, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(pf, "estimate_step", fake_estimate)
    tuner = Tuner(model=str(tiny_gpt2), strategy="lora", training={"progress_bar": False})
    with pytest.raises(RuntimeError, match="stop here"):
        tuner.preflight(sft_rows(8))
    assert seen["device"] == "meta"


def test_estimate_step_refuses_to_measure_another_device(tiny_gpt2):
    from tunekit import preflight as pf
    from tunekit.errors import TunekitError

    tuner = Tuner(model=str(tiny_gpt2), strategy="lora")
    rows = tuner._prepare(sft_rows(4)).train
    with pytest.raises(TunekitError, match="memory of 'cuda'"):
        pf.estimate_step(tuner.model, rows, pad_token_id=0, batch_size=2, accumulation=1, device="cuda")


def test_peak_memory_reads_the_gpu_it_is_given(monkeypatch):
    from tunekit.training.memory import PeakMemory

    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: calls.append(("max", device)) or 123)
    with PeakMemory("cuda:1") as peak:
        pass
    assert peak.peak_bytes == 123 and peak.kind == "cuda_max_allocated"
    assert calls == [("reset", torch.device("cuda", 1)), ("max", torch.device("cuda", 1))]


def test_generation_and_evaluation_run_where_the_model_is(tiny_gpt2):
    """On this CPU machine the process device is the CPU, and everything runs there."""
    tuner = Tuner(model=str(tiny_gpt2), strategy="lora", training={"progress_bar": False})
    assert _devices(tuner.model) == {"cpu"}
    prompt = "Reverse: a b\nAnswer:"
    ids = tuner.tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():  # two greedy steps by hand, on the same device
        for _ in range(2):
            ids = torch.cat([ids, tuner.model(input_ids=ids).logits[:, -1:].argmax(-1)], dim=1)
    expected = tuner.tokenizer.decode(ids[0, -2:], skip_special_tokens=True)
    assert tuner.generate(prompt, max_new_tokens=2) == expected
    # the answers only: three one-token words (the tiny vocabulary) and the end token, per row
    assert tuner.evaluate(sft_rows(4)).tokens == 4 * (3 + 1)


def test_saving_a_gathered_state_dict_writes_it(tiny_gpt2, tmp_path):
    from safetensors.torch import load_file

    from tunekit.training.distributed import gathered_state_dict, is_sharded, saving_state_dict

    tuner = Tuner(model=str(tiny_gpt2), strategy="full")
    model = tuner.model
    assert not is_sharded(model) and gathered_state_dict(model) is None
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    with saving_state_dict(model, state):
        model.save_pretrained(str(tmp_path / "m"))
    assert "save_pretrained" not in vars(model)  # the class's method again
    saved = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert saved and all(float(t.abs().sum()) == 0 for t in saved.values())


def test_the_gpu_check_is_prepared_and_refuses_to_run_without_cuda():
    """scripts/gpu-check.sh runs on a CUDA machine only: here its parts are compiled and imported,
    and the script itself must stop loudly."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    shell = root / "scripts" / "gpu-check.sh"
    assert subprocess.run(["bash", "-n", str(shell)], capture_output=True).returncode == 0
    spec = importlib.util.spec_from_file_location("gpu_check", root / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports without running anything
    assert callable(module.main) and callable(module.run_single) and callable(module.run_ranks)
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: run scripts/gpu-check.sh itself")
    proc = subprocess.run(["bash", str(shell)], capture_output=True, text=True, env={**__import__("os").environ, "PYTHON": sys.executable})
    assert proc.returncode == 2 and "no CUDA" in proc.stderr


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_the_facade_save_writes_a_gathered_state_dict(tiny_gpt2, tmp_path, strategy):
    """What fit does after a sharded run: ``with saving_state_dict(model, gathered): tuner.save(...)``."""
    from safetensors.torch import load_file

    from tunekit.training.distributed import saving_state_dict

    tuner = Tuner(model=str(tiny_gpt2), strategy={"name": strategy} if strategy == "full" else {"name": "lora", "rank": 2})
    gathered = {k: torch.full_like(v, 0.5) for k, v in tuner.model.state_dict().items()}
    with saving_state_dict(tuner.model, gathered):
        path = tuner.save(tmp_path / "saved")
    weights = load_file(str(path / ("model.safetensors" if strategy == "full" else "adapter_model.safetensors")))
    assert weights and all(bool((t == 0.5).all()) for t in weights.values())
    if strategy == "lora":
        assert all("lora_" in k for k in weights)


@pytest.mark.parametrize("flag", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_under_a_sharding_launch_the_model_stays_where_the_trainer_shards_it_from(tiny_gpt2, meta_device, monkeypatch, flag):
    """A model that only fits sharded must not be moved onto one GPU whole before FSDP / DeepSpeed shard it."""
    monkeypatch.setenv(flag, "true")
    assert _devices(Tuner(model=str(tiny_gpt2), strategy="lora").model) == {"cpu"}
