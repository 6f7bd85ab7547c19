"""The facade's verbs: generate, evaluate, load and continue, the CLI, and a light import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests.conftest import quick

from tunekit import Tuner
from tunekit.testing import chat_rows, sft_rows


def test_import_is_light():
    code = "import sys, tunekit; from tunekit import Tuner, TuneConfig, hookimpl; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_model_and_tokenizer_are_the_underlying_objects(tiny_llama):
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

    tuner = Tuner(model=str(tiny_llama), strategy="lora")
    assert isinstance(tuner.model, PeftModel)
    assert isinstance(tuner.tokenizer, PreTrainedTokenizerBase)


def _greedy(model, tokenizer, text: str, new_tokens: int) -> str:
    """Greedy decoding by hand: one forward pass per token, argmax, stop at EOS or end of turn."""
    import torch

    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    stops = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    chosen: list[int] = []
    with torch.no_grad():
        for _ in range(new_tokens):
            token = int(model(ids).logits[0, -1].argmax())
            if token in stops:
                break
            chosen.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(chosen, skip_special_tokens=True)


def test_generate_text_and_chat(tiny_llama):
    tuner = Tuner(model=str(tiny_llama), strategy="lora")
    model, tokenizer = tuner.model.eval(), tuner.tokenizer
    prompt = "Reverse: red green blue\nAnswer:"
    text = tuner.generate(prompt, max_new_tokens=5)
    # only the new text (not the prompt), greedy, at most 5 tokens
    assert text == _greedy(model, tokenizer, prompt, 5) and text
    chat = tuner.generate([{"role": "user", "content": "hi"}], max_new_tokens=5)
    # the chat is rendered with the tiny model's ChatML template and the assistant's generation prompt
    assert chat == _greedy(model, tokenizer, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", 5) and chat
    assert chat != _greedy(model, tokenizer, "hi", 5)  # the template changes the answer
    from tunekit import DataError

    with pytest.raises(DataError, match="unknown role"):
        tuner.generate([{"role": "robot", "content": "hi"}])


def test_chat_sft_end_to_end_and_chat_template_saved(tiny_llama, tmp_path):
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|im_end|>{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
    tuner = Tuner(model=str(tiny_llama), strategy="lora", data={"chat_template": template}, output_dir=str(tmp_path / "r"), training=quick(max_steps=2))
    tuner.fit(chat_rows(8))
    saved = json.loads((tmp_path / "r" / "model" / "tokenizer_config.json").read_text()).get("chat_template")
    if saved is None:  # newer transformers write it to chat_template.jinja
        saved = (tmp_path / "r" / "model" / "chat_template.jinja").read_text()
    assert saved == template
    assert Tuner.load(tmp_path / "r").tokenizer.chat_template == template


def test_evaluate_before_and_after(tiny_gpt2, tmp_path):
    tuner = Tuner(model=str(tiny_gpt2), strategy="full", output_dir=str(tmp_path / "r"), training=quick(max_steps=10, learning_rate=3e-3))
    before = tuner.evaluate(sft_rows(8))
    assert before.perplexity == pytest.approx(2.718281828 ** before.loss, rel=1e-6)
    # the loss is over the answer tokens only: three words (one token each in the tiny vocabulary) + EOS per row
    assert before.tokens == 8 * (3 + 1) and before.rows == 8
    tuner.fit(sft_rows(32))
    assert tuner.evaluate(sft_rows(8)).loss < before.loss


def test_fit_result_fields_and_eval_history(tiny_gpt2, tmp_path):
    tuner = Tuner(model=str(tiny_gpt2), strategy="lora", output_dir=str(tmp_path / "r"), training=quick(max_steps=4, eval_steps=2))
    result = tuner.fit(sft_rows(16), eval=sft_rows(4, seed=3))
    assert [p.step for p in result.eval_history] == [2, 4]
    assert result.eval_loss is not None and result.eval_perplexity is not None
    assert [p.step for p in result.loss_history] == [1, 2, 3, 4]
    # LoRA rank 8 on every linear layer of the tiny GPT-2 (n_embd 64, 2 layers, vocab 400), counted by hand:
    # c_attn 64->192, attn c_proj 64->64, c_fc 64->256, mlp c_proj 256->64: 8 * (256 + 128 + 320 + 320) per layer
    lora = 2 * 8 * ((64 + 192) + (64 + 64) + (64 + 256) + (256 + 64))
    # the base: wte 400x64 + wpe 512x64 + per layer (2 LayerNorms, 4 linears with bias) + ln_f; the head is tied
    block = 2 * 2 * 64 + (64 * 192 + 192) + (64 * 64 + 64) + (64 * 256 + 256) + (256 * 64 + 64)
    base = 400 * 64 + 512 * 64 + 2 * block + 2 * 64
    assert (result.trainable_params, result.total_params) == (lora, base + lora) == (16384, 174848)
    assert result.trainable_percent == pytest.approx(100 * 16384 / 174848)
    assert result.wall_time_s > 0 and result.tokens_per_second > 0
    assert json.loads((tmp_path / "r" / "result.json").read_text())["steps"] == 4
    assert "trainable params" in result.summary()


def test_load_then_continue_training(tiny_gpt2, tmp_path):
    first = Tuner(model=str(tiny_gpt2), strategy="lora", output_dir=str(tmp_path / "a"), training=quick(max_steps=3, learning_rate=1e-2))
    first.fit(sft_rows(16))
    again = Tuner.load(tmp_path / "a", output_dir=str(tmp_path / "b"))
    import torch

    before = {n: p.detach().clone() for n, p in again.model.named_parameters() if p.requires_grad}
    assert before, "a reloaded adapter must be trainable"
    again.fit(sft_rows(16))
    assert any(not torch.equal(p, before[n]) for n, p in again.model.named_parameters() if n in before)


def test_load_refuses_a_plain_directory(tiny_gpt2):
    from tunekit import ModelLoadError

    with pytest.raises(ModelLoadError, match="not a directory saved by tunekit"):
        Tuner.load(tiny_gpt2)


def test_cli_fit_from_yaml(tiny_gpt2, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in sft_rows(8)))
    (tmp_path / "eval.jsonl").write_text("\n".join(json.dumps(r) for r in sft_rows(3, seed=9)))
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {tiny_gpt2}\nstrategy: {{name: lora, rank: 4}}\noutput_dir: {tmp_path / 'out'}\n"
        "data:\n  train: train.jsonl\n  eval: eval.jsonl\ntraining:\n  max_steps: 2\n  progress_bar: false\n"
        "metrics: [loss, {name: exact_match, case_fold: true}]\n"
    )
    proc = subprocess.run([sys.executable, "-m", "tunekit.cli", "fit", str(config)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "trainable params" in proc.stdout
    assert (tmp_path / "out" / "model" / "adapter_model.safetensors").is_file()
    measured = json.loads((tmp_path / "out" / "result.json").read_text())["eval_metrics"]
    assert set(measured) == {"loss", "exact_match"}  # the config's metrics, not the default loss + perplexity
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model: {tiny_gpt2}\nstrategy: {{name: lora, rank: 0}}\n")
    proc = subprocess.run([sys.executable, "-m", "tunekit.cli", "fit", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "strategy.rank: must be >= 1" in proc.stderr and "Traceback" not in proc.stderr


def test_the_same_rows_are_tokenized_once(tiny_gpt2, tmp_path, monkeypatch):
    from tunekit.builtin.objectives import SFTObjective

    seen = []
    real = SFTObjective.tokenize
    monkeypatch.setattr(SFTObjective, "tokenize", lambda self, rows, *a, **k: seen.append(len(rows)) or real(self, rows, *a, **k))
    tuner = Tuner(model=str(tiny_gpt2), strategy="lora", output_dir=str(tmp_path / "run"), training=quick(max_steps=2))
    train, held_out = sft_rows(24, seed=1), sft_rows(6, seed=2)
    tuner.evaluate(held_out)
    tuner.fit(train, held_out)
    tuner.evaluate(held_out)
    tuner.evaluate([dict(r) for r in held_out])  # equal rows given anew: the same content, the same key
    assert seen == [6, 24]
    tuner.config.training.max_length = 32  # a setting that changes the tokens: tokenized again
    tuner.evaluate(held_out)
    assert seen == [6, 24, 6]
