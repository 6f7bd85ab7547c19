"""Objectives: ``sft`` (loss on the answer only) and ``causal-lm`` (loss on every token)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from tunekit.data.chat import eos_id, render_chat
from tunekit.data.collate import IGNORE_INDEX
from tunekit.errors import DataError
from tunekit.hookspecs import Register, hookimpl
from tunekit.parts import PartOptions

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


class SFTOptions(PartOptions):
    append_eos: bool = Field(
        default=True,
        description="Append the EOS token to each answer and train it, so the tuned model stops.",
    )


class SFTObjective:
    """Supervised fine-tuning: the loss is taken on the answer (assistant turns) only.

    Prompt, system and user tokens are masked out (label -100). The EOS token closes every
    answer and is trained, also when the tokenizer's pad token equals its EOS token (padding
    is masked by position in the collator, never by token id).
    """

    name: ClassVar[str] = "sft"
    description: ClassVar[str] = "Supervised: loss on the answer / assistant turns only, EOS trained."
    Options: ClassVar[type[SFTOptions]] = SFTOptions

    def __init__(self, options: SFTOptions):
        self.options = options

    def accepts(self, row_format: str) -> bool:
        return row_format in {"prompt_completion", "chat"}

    def tokenize(self, rows: Dataset, tokenizer: PreTrainedTokenizerBase, *, max_length: int) -> Dataset:
        eos = eos_id(tokenizer)
        chat = "messages" in rows.column_names

        def one(row: dict[str, Any]) -> dict[str, Any]:
            if chat:
                ids, labels = self._chat(row["messages"], tokenizer, eos)
            else:
                prompt = tokenizer(row["prompt"], add_special_tokens=True)["input_ids"]
                answer = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
                if self.options.append_eos:
                    answer = [*answer, eos]
                ids, labels = [*prompt, *answer], [IGNORE_INDEX] * len(prompt) + list(answer)
            truncated = len(ids) > max_length
            ids, labels = ids[:max_length], labels[:max_length]
            return {"input_ids": ids, "labels": labels, "length": len(ids), "truncated": truncated}

        out = rows.map(one, remove_columns=rows.column_names, desc="tokenizing (sft)")
        truncated = sum(out["truncated"])
        trained = [sum(1 for x in labels if x != IGNORE_INDEX) for labels in out["labels"]]
        empty = [i for i, n in enumerate(trained) if n == 0]
        if truncated:
            log.warning("sft: %d of %d rows were longer than max_length=%d and were truncated.", truncated, len(out), max_length)
        if empty:
            if len(empty) == len(out):
                raise DataError(
                    f"no row has any answer token left to train on (max_length={max_length}); "
                    "raise training.max_length or shorten the prompts."
                )
            log.warning("sft: dropping %d rows with no answer token inside max_length=%d.", len(empty), max_length)
            drop = set(empty)
            out = out.select([i for i in range(len(out)) if i not in drop])
        return out.remove_columns(["truncated"])

    def _chat(self, messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase, eos: int) -> tuple[list[int], list[int]]:
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError("an sft chat row has no 'assistant' message, so there is nothing to train on.")
        if not getattr(tokenizer, "is_fast", False):
            raise DataError("sft on chat rows needs a fast tokenizer (one with offset mappings).")
        text = render_chat(tokenizer, messages)
        spans: list[tuple[int, int]] = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prefix = render_chat(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
            upto = render_chat(tokenizer, messages[: i + 1])
            if not (text.startswith(upto) and upto.startswith(prefix)):
                raise DataError(
                    "the chat template does not render a conversation as a prefix of its "
                    "continuation, so the assistant turns cannot be located; use a template "
                    "that does (most do), or prompt/completion rows."
                )
            spans.append((len(prefix), len(upto)))
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = [
            tok if any(start <= s < end for start, end in spans) else IGNORE_INDEX
            for tok, (s, _) in zip(ids, enc["offset_mapping"], strict=True)
        ]
        if self.options.append_eos and eos not in [t for t in labels if t != IGNORE_INDEX][-3:]:
            ids.append(eos)
            labels.append(eos)
        return ids, labels


class CausalLMOptions(PartOptions):
    packing: bool = Field(
        default=True,
        description="Concatenate texts (each closed by EOS) and cut them into blocks of max_length, "
        "so no compute goes to padding; off: each text is split on its own.",
    )


class CausalLMObjective:
    """Self-supervised language modelling: the loss is taken on every token.

    Each text is closed by EOS. Long texts are split into blocks of ``max_length``; with
    ``packing`` the texts are concatenated first, so blocks are full.
    """

    name: ClassVar[str] = "causal-lm"
    description: ClassVar[str] = "Self-supervised: loss on every token; texts packed into max_length blocks."
    Options: ClassVar[type[CausalLMOptions]] = CausalLMOptions

    def __init__(self, options: CausalLMOptions):
        self.options = options

    def accepts(self, row_format: str) -> bool:
        return row_format in {"text", "prompt_completion", "chat"}

    def tokenize(self, rows: Dataset, tokenizer: PreTrainedTokenizerBase, *, max_length: int) -> Dataset:
        eos = eos_id(tokenizer)

        def texts(batch: dict[str, list[Any]]) -> list[str]:
            if "text" in batch:
                return batch["text"]
            if "messages" in batch:
                return [render_chat(tokenizer, m) for m in batch["messages"]]
            return [p + c for p, c in zip(batch["prompt"], batch["completion"], strict=True)]

        def blocks(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            docs = [ids + [eos] for ids in tokenizer(texts(batch), add_special_tokens=True)["input_ids"]]
            streams = [[t for d in docs for t in d]] if self.options.packing else docs
            chunks = [s[i : i + max_length] for s in streams for i in range(0, len(s), max_length)]
            return {"input_ids": chunks, "labels": [list(c) for c in chunks], "length": [len(c) for c in chunks]}

        # With packing, one map batch is one stream; a large batch keeps blocks full.
        return rows.map(
            blocks, batched=True, batch_size=1000, remove_columns=rows.column_names, desc="tokenizing (causal-lm)"
        )


@hookimpl
def register_objectives(register: Register) -> None:
    register(SFTObjective)
    register(CausalLMObjective)
