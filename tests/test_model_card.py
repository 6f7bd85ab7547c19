"""Every fit leaves a readable run directory: config, metrics JSON, loss plot, model card, adapter."""

from __future__ import annotations

import json

from tests.conftest import quick

from tunekit import Tuner
from tunekit.testing import chat_rows, text_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_fit_writes_the_run_directory(tiny_llama, tmp_path):
    out = tmp_path / "run"
    tuner = Tuner(model=str(tiny_llama), strategy={"name": "lora", "rank": 4}, output_dir=str(out), training=quick(max_steps=3, eval_steps=2))
    result = tuner.fit(chat_rows(16), eval=chat_rows(4, seed=1), metrics=["loss", "exact_match"])
    assert {"tunekit.yaml", "result.json", "loss.png", "README.md", "model"} <= {p.name for p in out.iterdir()}

    saved = json.loads((out / "result.json").read_text())
    assert saved["eval_metrics"] == result.eval_metrics and set(saved["eval_metrics"]) == {"loss", "exact_match"}
    assert len(saved["eval_generations"]) == 4

    assert (out / "loss.png").read_bytes()[:8] == PNG_MAGIC

    card = (out / "README.md").read_text()
    assert str(tiny_llama) in card  # base model
    assert "`lora`" in card and "rank=4" in card  # strategy
    # counted by hand: rank 4 on the tiny Llama's 7 linears, 4 * 1024 per block, 2 blocks; the base is embeddings and
    # head 400x64 each, 2 blocks of 36,992 and a final norm of 64
    assert "| trainable parameters | 8,192 of 133,440 (6.14%) |" in card
    assert "| steps | 3 x 8 rows = 24 rows seen (batch size 8 x 1 accumulation" in card
    assert "16 training rows (chat), 4 eval rows" in card  # data
    assert "eval exact_match" in card and "eval loss" in card  # metrics
    assert "![loss curve](loss.png)" in card
    assert "- `model/`: the tuned adapter, in peft's format (`adapter_config.json`" in card  # what model/ holds


def test_the_card_says_what_model_holds_from_the_saved_format(tiny_gpt2, tmp_path):
    Tuner(model=str(tiny_gpt2), strategy="full", output_dir=str(tmp_path / "full"), training=quick(max_steps=1)).fit(text_rows(8))
    card = (tmp_path / "full" / "README.md").read_text()
    assert "- `model/`: the tuned model, a transformers model directory" in card


def test_saved_adapter_loads_in_plain_peft(tiny_llama, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    tuner = Tuner(model=str(tiny_llama), strategy="lora", output_dir=str(out), training=quick(max_steps=2, learning_rate=1e-2))
    tuner.fit(chat_rows(16))
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_llama)), str(out / "model")).eval()
    ids = torch.tensor([[1, 5, 9, 12]])
    tuner.model.eval()
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, tuner.model(ids).logits, atol=1e-5)


def test_no_eval_data_still_writes_plot_and_card(tiny_gpt2, tmp_path):
    out = tmp_path / "run"
    Tuner(model=str(tiny_gpt2), strategy="lora", output_dir=str(out), training=quick(max_steps=2)).fit(text_rows(8))
    card = (out / "README.md").read_text()
    assert "eval loss" not in card and "final train loss" in card
    assert (out / "loss.png").read_bytes()[:8] == PNG_MAGIC


def test_a_save_names_its_base_as_the_config_does_and_has_a_real_card(tiny_llama, tmp_path):
    import json

    from tests.conftest import quick

    from tunekit import Tuner
    from tunekit.testing import sft_rows

    tuner = Tuner(model=str(tiny_llama), output_dir=str(tmp_path / "run"), training=quick(max_steps=2))
    tuner.fit(sft_rows(8))
    saved = tmp_path / "run" / "model"
    assert json.loads((saved / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_llama)
    card = (saved / "README.md").read_text()
    assert "## Model Details" not in card  # not peft's empty template
    assert "Tuner.load" in card and "PeftModel.from_pretrained" in card
    assert Tuner.load(saved).model is not None
