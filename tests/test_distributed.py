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


def test_every_rank_has_finished_a_checkpoint_before_it_is_published(tiny_gpt2, tmp_path, monkeypatch):
    """Each rank writes its own RNG state into the staged checkpoint; publishing (a rename) waits for all."""
    from accelerate import Accelerator

    import tunekit.training.trainer as trainer_module
    from tunekit import Tuner
    from tunekit.testing import sft_rows

    events: list[str] = []
    publish, barrier = trainer_module.publish, Accelerator.wait_for_everyone
    monkeypatch.setattr(trainer_module, "publish", lambda staged, final: (events.append("publish"), publish(staged, final))[1])
    monkeypatch.setattr(Accelerator, "wait_for_everyone", lambda self: (events.append("barrier"), barrier(self))[1])
    tuner = Tuner(model=str(tiny_gpt2), strategy={"name": "lora", "rank": 2}, output_dir=str(tmp_path / "run"),
                  training={"max_steps": 2, "save_steps": 1, "batch_size": 4, "progress_bar": False})
    tuner.fit(sft_rows(8))
    published = [i for i, e in enumerate(events) if e == "publish"]
    assert len(published) == 2
    for i in published:
        assert "barrier" in events[:i] and events[i - 1] == "barrier", events


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
    # ... and the same quantity as the Trainer's evaluation at the last step, on the same weights
    assert result["eval_history"][-1]["step"] == 3
    assert result["eval_history"][-1]["loss"] == pytest.approx(result["eval_loss"], rel=1e-5)
    # the answers were generated across ranks (each its share) and gathered on both, in row order
    generations = [g["prediction"] for g in result["eval_generations"]]
    assert len(generations) == 5 and generations == [g["prediction"] for g in ranks[1]["result"]["eval_generations"]]
    assert not ranks[0]["training_mode"] and not ranks[1]["training_mode"]
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


FSDP_SCRIPT = Path(__file__).parent / "scripts" / "fsdp_gather.py"


@pytest.mark.slow
@pytest.mark.parametrize("fsdp_version", [2, 1])
def test_a_sharded_fsdp_model_is_saved_whole_and_evaluated_across_ranks(tiny_gpt2, tmp_path, fsdp_version):
    """FSDP2 / FSDP1 on 2 CPU processes (gloo): the gathered save loads in plain transformers with the
    sharded module's logits; the eval loss and the greedy answers on the sharded module (uneven
    shards per rank) are what one process computes on the saved model. accelerate itself runs FSDP
    only on accelerators (see the script's docstring), so the script shards with torch directly."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunekit.evaluation import evaluate_loss, generate_answers
    from tunekit.testing import sft_rows

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", str(29534 + fsdp_version), str(FSDP_SCRIPT), str(tiny_gpt2), str(tmp_path),
         str(fsdp_version)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert not any(k.startswith("_fsdp") or "._fsdp" in k for k in rank0["keys"])

    saved = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"), dtype=torch.float32).eval()
    original = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2), dtype=torch.float32).eval()
    probe = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        logits = saved(input_ids=probe).logits
        before = original(input_ids=probe).logits
    assert torch.allclose(logits, torch.tensor(rank0["logits"]), atol=1e-5)
    assert not torch.allclose(logits, before, atol=1e-3)  # it trained: these are not the weights on disk

    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "model"))
    enc = [tokenizer(r["prompt"] + r["completion"])["input_ids"] for r in sft_rows(5, seed=9)]
    alone = evaluate_loss(saved, Dataset.from_dict({"input_ids": enc, "labels": enc}), pad_token_id=int(tokenizer.pad_token_id or 0),
                          batch_size=1, trained_logits_only=False)
    assert rank0["eval_loss"] == pytest.approx(alone.loss, rel=1e-5) and rank1["eval_loss"] == rank0["eval_loss"]
    assert rank0["eval_tokens"] == alone.tokens
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    answers = generate_answers(saved, tokenizer, [r["prompt"] for r in sft_rows(3, seed=4)], batch_size=1, max_new_tokens=4)
    assert rank0["answers"] == rank1["answers"] == answers
