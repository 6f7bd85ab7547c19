"""Helpers for tests that need a model but no download: tiny models, a tokenizer trained on the
fly, and small datasets with a learnable pattern.

>>> from tunekit.testing import build_tiny_model          # doctest: +SKIP
>>> path = build_tiny_model(tmp_path / "gpt2", arch="gpt2")  # doctest: +SKIP
>>> Tuner(model=str(path), strategy="lora").fit(sft_rows())  # doctest: +SKIP

The models are saved to a directory and loaded back through the same loading code that a
user's hub id or local directory goes through.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

WORDS = (
    "red green blue yellow black white cat dog bird fish tree river stone cloud "
    "one two three four five six seven eight nine ten apple pear plum grape lemon "
    "run jump swim fly sing read walk talk big small hot cold old new"
).split()

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Sentences over a small vocabulary, also covering the task prompts below."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]
    lines += ["Reverse: " + " ".join(rng.sample(WORDS, 3)) + "\nAnswer:" for _ in range(50)]
    return lines


def _train_tokenizer(special: list[str], vocab_size: int, texts: list[str] | None = None) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` (default: :func:`corpus`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus() if texts is None else texts, trainer=trainer)
    return tok


def build_tiny_tokenizer(arch: Literal["gpt2", "llama"] = "gpt2", vocab_size: int = 400) -> Any:
    """A fast tokenizer trained on :func:`corpus`.

    ``gpt2``: one special token ``<|endoftext|>`` (BOS = EOS) and no pad token, like GPT-2.
    ``llama``: ``<s>`` BOS added to every text, ``<|im_end|>`` as EOS, and a ChatML chat template.
    """
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    if arch == "gpt2":
        raw = _train_tokenizer(["<|endoftext|>"], vocab_size)
        return PreTrainedTokenizerFast(
            tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
        )
    raw = _train_tokenizer(["<s>", "<|im_end|>", "<|im_start|>", "<pad>"], vocab_size)
    raw.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", raw.token_to_id("<s>"))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


Arch = Literal["gpt2", "llama", "qwen2", "gemma", "phi", "mixtral", "qwen2-moe"]


def build_tiny_model(
    path: str | Path, arch: Arch = "gpt2", *, seed: int = 0, hidden: int = 64, layers: int = 2
) -> Path:
    """Build a randomly initialised tiny model of ``arch`` with its tokenizer and save it to ``path``.

    GPT-2 ties its head to the input embeddings (as the real one does) and uses Conv1D
    layers; Llama has an untied head, grouped-query attention and a chat template. The other
    architectures use Llama's tokenizer: ``qwen2`` (biases on q/k/v), ``gemma`` (tied head,
    embeddings scaled by sqrt(hidden)), ``phi`` (biases everywhere, a LayerNorm, attention and MLP
    in parallel), and the mixtures of experts ``mixtral`` and ``qwen2-moe`` (4 experts, 2 per token,
    fused expert weights; Qwen2-MoE adds a shared expert).
    """
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    path = Path(path)
    tokenizer = build_tiny_tokenizer("gpt2" if arch == "gpt2" else "llama")
    vocab = len(tokenizer)
    if arch == "gpt2":
        config: Any = GPT2Config(
            vocab_size=vocab, n_positions=512, n_embd=hidden, n_layer=layers, n_head=4,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
        )
    elif arch != "llama":
        config = _other_config(arch, tokenizer, hidden, layers)
    else:
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _other_config(arch: str, tokenizer: Any, hidden: int, layers: int) -> Any:
    """The config of one of the extra tiny architectures (see :func:`build_tiny_model`)."""
    import transformers

    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "qwen2":
        return transformers.Qwen2Config(**common, tie_word_embeddings=False)
    if arch == "gemma":
        return transformers.GemmaConfig(**common, head_dim=hidden // 4, tie_word_embeddings=True)
    if arch == "phi":
        common["num_key_value_heads"] = 4
        return transformers.PhiConfig(**common, tie_word_embeddings=False)
    if arch == "mixtral":
        return transformers.MixtralConfig(
            **common, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False
        )
    if arch == "qwen2-moe":
        return transformers.Qwen2MoeConfig(
            **common, moe_intermediate_size=hidden // 2, shared_expert_intermediate_size=hidden,
            num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[],
            tie_word_embeddings=False,
        )
    raise ValueError(f"unknown tiny architecture {arch!r}")


def sft_rows(n: int = 32, seed: int = 0) -> list[dict[str, str]]:
    """Prompt/completion rows of a learnable task: reverse three words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(WORDS, 3)
        rows.append({"prompt": "Reverse: " + " ".join(words) + "\nAnswer:", "completion": " " + " ".join(reversed(words))})
    return rows


def pair_rows(n: int = 32, seed: int = 0) -> list[dict[str, str]]:
    """Preference pairs of the :func:`sft_rows` task: the three words reversed (chosen) or as given (rejected)."""
    return [
        {"prompt": row["prompt"], "chosen": row["completion"], "rejected": " " + row["prompt"].split(": ", 1)[1].split("\n")[0]}
        for row in sft_rows(n, seed)
    ]


def chat_rows(n: int = 32, seed: int = 0) -> list[dict[str, Any]]:
    """Chat rows (system, user, assistant) of the same task."""
    return [
        {
            "messages": [
                {"role": "system", "content": "You reverse words."},
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["completion"].strip()},
            ]
        }
        for r in sft_rows(n, seed)
    ]


def text_rows(n: int = 32, seed: int = 0) -> list[dict[str, str]]:
    """Raw-text rows for self-supervised training."""
    return [{"text": line} for line in corpus(n, seed)[:n]]


def plain_greedy_answers(model: Any, tokenizer: Any, encoded: list[list[int]], *, batch_size: int, max_new_tokens: int) -> list[str]:
    """The reference for tunekit's own decoding loop (:mod:`tunekit.generation`): plain greedy
    ``model.generate`` over the token-id prompts in their order, left-padded per batch, stopping where
    evaluation stops (:func:`tunekit.evaluation.stop_token_ids`). The tests compare answers with it and the
    benchmark times against it."""
    import torch

    from tunekit.evaluation import stop_token_ids

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = stop_token_ids(model, tokenizer)
    out: list[str] = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start : start + batch_size]
            longest = max(len(e) for e in batch)
            ids = torch.tensor([[pad] * (longest - len(e)) + e for e in batch])
            mask = torch.tensor([[0] * (longest - len(e)) + [1] * len(e) for e in batch])
            gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=pad, eos_token_id=eos)
            out += [str(tokenizer.decode(gen[row, longest:], skip_special_tokens=True)) for row in range(len(batch))]
    return out
