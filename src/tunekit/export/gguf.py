"""Write a merged Llama-family model and its tokenizer as one GGUF file (llama.cpp, Ollama).

The file is what llama.cpp's own ``convert_hf_to_gguf.py`` writes for the same model: its
architecture keys, its tensor names (through the ``gguf`` package's ``TensorNameMap``), the
q/k projections permuted into llama.cpp's rope layout for Llama and Mistral (Qwen2 keeps the
Hugging Face layout), 1-D tensors (norms, biases) in float32, and the byte-level BPE tokenizer
(tokens, merges, token types, special ids, chat template) as metadata.

>>> export_gguf(tuner.merge(), tuner.tokenizer, "model.gguf", type="q8_0")  # doctest: +SKIP

A model with adapters must be merged first (``Tuner.merge()``); a peft-wrapped one is refused.
The file is written under a temporary name next to ``path`` and renamed into place, so an
interrupted export never leaves half a file; an existing file is kept unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tunekit.errors import MissingDependencyError, TunekitError

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger(__name__)

GGUFType = Literal["f32", "f16", "q8_0", "q4_0"]
TYPES: tuple[str, ...] = ("f32", "f16", "q8_0", "q4_0")

SUPPORTED: dict[str, tuple[str, bool]] = {
    # transformers model_type: (llama.cpp architecture, q/k permuted for llama.cpp's rope layout)
    "llama": ("llama", True),
    "mistral": ("llama", True),  # llama.cpp converts Mistral as a Llama
    "qwen2": ("qwen2", False),  # NEOX-style rope: llama.cpp keeps the HF layout
}
"""The architectures export_gguf writes, by ``config.model_type``."""

BLOCK = 32
"""Elements per Q8_0 / Q4_0 block: a row must be a multiple of it to be quantized."""

# Byte-level pre-tokenizers llama.cpp knows by name (tokenizer.ggml.pre), recognised by shape.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def export_gguf(
    model: torch.nn.Module,
    tokenizer: Any,
    path: str | os.PathLike[str],
    *,
    type: GGUFType = "f16",  # noqa: A002 - the name llama.cpp's --outtype users know
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (a plain, merged transformers model) and ``tokenizer`` to the GGUF file ``path``.

    ``type``: ``f32``; ``f16`` (2-D weights in float16); ``q8_0`` / ``q4_0`` (2-D weights in
    llama.cpp's 32-element blocks; a weight whose rows are not a multiple of 32 falls back to
    f16, with a warning naming it). 1-D tensors stay float32 in every type, as llama.cpp does.
    Returns the path written.
    """
    try:
        import gguf
        import numpy as np
    except ImportError as exc:  # pragma: no cover - gguf is an optional dependency
        raise MissingDependencyError(
            "exporting GGUF needs the 'gguf' package: pip install gguf"
        ) from exc

    if type not in TYPES:
        raise TunekitError(f"GGUF type {type!r} is not supported: choose one of {', '.join(TYPES)}.")
    _refuse_adapters(model)
    config: Any = model.config
    arch_name, permute = _architecture(model)
    path = Path(path)
    if path.is_dir():
        raise TunekitError(f"{path} is a directory: give the GGUF file's path, e.g. {path / 'model.gguf'}.")
    if path.exists() and not overwrite:
        raise TunekitError(f"{path} already exists: pass overwrite=True to replace it, or choose another path.")
    path.parent.mkdir(parents=True, exist_ok=True)

    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    writer = gguf.GGUFWriter(tmp, arch_name)
    try:
        _write_hyperparameters(writer, config, type, gguf)
        _write_tokenizer(writer, tokenizer, config.vocab_size, gguf)
        fallbacks = _write_tensors(writer, model, gguf.get_tensor_name_map(arch, config.num_hidden_layers),
                                   permute, type, gguf, np)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    if fallbacks:
        log.warning("GGUF %s: %d tensor(s) with rows not a multiple of %d were written as f16: %s",
                    type, len(fallbacks), BLOCK, ", ".join(fallbacks))
    return path


def _refuse_adapters(model: Any) -> None:
    wrapped = hasattr(model, "peft_config") or getattr(model, "_hf_peft_config_loaded", False)
    if wrapped or any("lora_" in name for name, _ in model.named_parameters()):
        raise TunekitError(
            "this model still has adapters (it is peft-wrapped): merge them first, e.g. "
            "export_gguf(tuner.merge(), tuner.tokenizer, path), or use Tuner.export(path), which merges."
        )


def _architecture(model: Any) -> tuple[str, bool]:
    model_type = getattr(model.config, "model_type", None)
    names = ", ".join(f"{t} ({t.capitalize()}ForCausalLM)" for t in SUPPORTED)
    if model_type not in SUPPORTED:
        cls = type(model).__name__
        raise TunekitError(
            f"GGUF export does not support the {model_type!r} architecture ({cls}); supported: {names}."
        )
    if not type(model).__name__.endswith("ForCausalLM"):
        raise TunekitError(f"GGUF export needs a *ForCausalLM model with its head, not {type(model).__name__}.")
    rope = getattr(model.config, "rope_parameters", None) or getattr(model.config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise TunekitError(
            f"GGUF export does not yet write rope scaling ({rope.get('rope_type', rope.get('type'))!r}); "
            "only models with the default rope are supported."
        )
    return SUPPORTED[model_type]


def _write_hyperparameters(writer: Any, config: Any, type: str, gguf: Any) -> None:  # noqa: A002
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_type("model")
    writer.add_name(Path(str(getattr(config, "name_or_path", "") or "tunekit-model")).name or "tunekit-model")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    file_types = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0"}
    writer.add_file_type(int(getattr(gguf.LlamaFileType, file_types[type])))
    if type in ("q8_0", "q4_0"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _pre_tokenizer_name(pre: dict[str, Any] | None) -> str:
    """llama.cpp's name for a byte-level pre-tokenizer (``tokenizer.ggml.pre``), from its JSON."""
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"  # llama.cpp's name (llama-vocab.cpp); "gpt2" is the tokenizer *model*, not a pre-tokenizer
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = steps[0].get("pattern", {}).get("Regex")
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as qwen2

        if regex == _LLAMA3_SPLIT:
            return "llama-bpe"
        if regex == qwen2:
            return "qwen2"
    raise TunekitError(
        f"GGUF export does not recognise this tokenizer's pre-tokenizer ({json.dumps(pre)[:200]}): "
        "supported are GPT-2's byte-level split, SmolLM's, Llama-3's and Qwen2's."
    )


def _write_tokenizer(writer: Any, tokenizer: Any, vocab_size: int, gguf: Any) -> None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TunekitError("GGUF export needs a fast tokenizer (tokenizer.json), not a slow one.")
    spec = json.loads(backend.to_str())
    if spec["model"]["type"] != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise TunekitError(
            "GGUF export supports byte-level BPE tokenizers (GPT-2, Llama-3, SmolLM, Qwen2 style) only; "
            f"this one is {spec['model']['type']} with a {(spec.get('decoder') or {}).get('type')} decoder "
            "(SentencePiece-style tokenizers are not exported yet)."
        )
    pre = _pre_tokenizer_name(spec.get("pre_tokenizer"))
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if len(by_id) > vocab_size or max(by_id) >= vocab_size:
        raise TunekitError(f"the tokenizer has ids beyond the model's vocab_size ({vocab_size}): resize the embeddings.")
    added = getattr(tokenizer, "added_tokens_decoder", {})
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in by_id:  # llama.cpp pads the vocabulary to the embedding size the same way
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            add(int(token_id))
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id])
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id]
                             and len(probe) > 1)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        writer.add_chat_template(template)


def _permute(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute``: rotary halves interleaved per head (weights and biases)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_tensors(writer: Any, model: Any, names: Any, permute: bool, type: str, gguf: Any, np: Any) -> list[str]:  # noqa: A002
    config = model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    tied = bool(getattr(config, "tie_word_embeddings", False))
    quant = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}.get(type)
    fallbacks: list[str] = []
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp leaves the tied head out; loaders reuse token_embd
        if "rotary_emb" in hf_name:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise TunekitError(f"GGUF export cannot place the tensor {hf_name!r}: no llama.cpp name maps to it.")
        data = tensor.detach().to(device="cpu").float().numpy()
        if permute and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = _permute(data, heads, heads)
        elif permute and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = _permute(data, heads, kv_heads)
        if data.ndim == 1 or type == "f32":
            writer.add_tensor(name, data.astype(np.float32))
        elif quant is None or data.shape[-1] % BLOCK:
            if quant is not None:
                fallbacks.append(name)
            writer.add_tensor(name, data.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, quant), raw_dtype=quant)
    return fallbacks
