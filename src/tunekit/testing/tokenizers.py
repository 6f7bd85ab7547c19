"""Offline tokenizers that imitate real tokenizer families, for tests of the label path.

Each is trained in milliseconds on :func:`tunekit.testing.corpus` and copies what matters for
labels from the family it is named after: how words are split, whether a BOS is added, which
special tokens exist, and what the chat template writes.

>>> from tunekit.testing.tokenizers import build_family_tokenizer   # doctest: +SKIP
>>> tok = build_family_tokenizer("llama3")                         # doctest: +SKIP

- ``gpt2``: byte-level BPE, ``<|endoftext|>`` is BOS = EOS and is never added; no template of
  its own, so it gets a plain ``### role:`` template without any end-of-turn marker (what a
  user sets through ``data.chat_template``).
- ``mistral``: SentencePiece-style (``▁`` word prefix, prepended to every text, as the legacy
  Llama-2 / Mistral fast tokenizers do); ``<s>`` added to every text; the Mistral-v0.1 style
  ``[INST]`` template writes ``bos_token`` itself and closes each answer with ``eos_token``.
- ``llama3``: byte-level BPE; ``<|begin_of_text|>`` added to every text *and* written by the
  Llama-3 template; ``<|eot_id|>`` closes each turn and is the EOS (as in Llama-3.1-Instruct).
- ``chatml``: byte-level BPE without BOS; ChatML ``<|im_start|>``/``<|im_end|>`` turns; the EOS
  is ``<|endoftext|>``, not the end-of-turn token; the Qwen2.5 template injects a default
  system prompt when the conversation has none.
"""

from __future__ import annotations

from typing import Any, Literal

from tunekit.testing import corpus

Family = Literal["gpt2", "mistral", "llama3", "chatml"]
FAMILIES: tuple[Family, ...] = ("gpt2", "mistral", "llama3", "chatml")

PLAIN_TEMPLATE = (
    "{% for message in messages %}### {{ message['role'] }}:\n{{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}### assistant:\n{% endif %}"
)

# Mistral-7B-Instruct-v0.1's template, with the system prompt folded into the first user turn
# (as later Mistral templates do) and a space before the answer (as Llama-2's does).
MISTRAL_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] + '\n\n' %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)

# Meta-Llama-3-8B-Instruct's template.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Qwen2.5-Instruct's template without the tool-call branches.
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

DEFAULT_SYSTEM = "You are a helpful assistant."


def _training_text() -> list[str]:
    extra = [
        "Reverse the words.", "You reverse words.", "Hello, I reverse words.", "Answer:",
        "system user assistant", "You are a helpful assistant.",
    ]
    return corpus() + extra * 5


def _byte_level(special: list[str], vocab_size: int) -> Any:
    from tunekit.testing import _train_tokenizer

    return _train_tokenizer(special, vocab_size, _training_text())


def _sentencepiece_like(special: list[str], vocab_size: int) -> Any:
    """The legacy Llama-2 / Mistral fast tokenizer: ``▁`` prepended to every text piece."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    # SentencePiece never merges across a word start; splitting at ▁ does the same here.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    alphabet = [chr(i) for i in range(32, 127)] + ["\n", "▁"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, initial_alphabet=alphabet)
    tok.train_from_iterator(_training_text(), trainer=trainer)
    return tok


def _adds_bos(raw: Any, bos: str) -> None:
    from tokenizers import processors

    raw.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, raw.token_to_id(bos))]
    )


def build_family_tokenizer(family: Family, vocab_size: int = 600) -> Any:
    """A fast tokenizer (``PreTrainedTokenizerFast``) imitating ``family``; see the module docstring."""
    from transformers import PreTrainedTokenizerFast

    kwargs: dict[str, Any] = {"clean_up_tokenization_spaces": False}
    if family == "gpt2":
        raw = _byte_level(["<|endoftext|>"], vocab_size)
        tok = PreTrainedTokenizerFast(
            tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>", **kwargs
        )
        tok.chat_template = PLAIN_TEMPLATE
    elif family == "mistral":
        raw = _sentencepiece_like(["<unk>", "<s>", "</s>"], vocab_size)
        _adds_bos(raw, "<s>")
        tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>", **kwargs)
        tok.chat_template = MISTRAL_TEMPLATE
    elif family == "llama3":
        special = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        raw = _byte_level(special, vocab_size)
        _adds_bos(raw, "<|begin_of_text|>")
        tok = PreTrainedTokenizerFast(
            tokenizer_object=raw, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
            extra_special_tokens=["<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"], **kwargs,
        )
        tok.chat_template = LLAMA3_TEMPLATE
    elif family == "chatml":
        raw = _byte_level(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], vocab_size)
        tok = PreTrainedTokenizerFast(
            tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
            extra_special_tokens=["<|im_start|>", "<|im_end|>"], **kwargs,
        )
        tok.chat_template = CHATML_TEMPLATE
    else:
        raise ValueError(f"unknown tokenizer family {family!r}; use one of {', '.join(FAMILIES)}")
    return tok
