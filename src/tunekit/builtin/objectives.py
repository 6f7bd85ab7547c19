"""Objectives: ``sft`` (loss on the answer only), ``causal-lm`` (loss on every token) and ``classify``
(a classification head, see :mod:`tunekit.builtin.classify`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from tunekit.data.chat import AnswerSpan, adds_special_tokens, answer_spans, eos_id, render_chat, special_ids
from tunekit.data.collate import IGNORE_INDEX, PadPerBatch
from tunekit.data.pipeline import is_stream
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
        description="Where the chat template writes no end-of-turn token (or for prompt/completion rows), "
        "append EOS after the last answer and train it, so the tuned model stops.",
    )


class SFTObjective:
    """Supervised fine-tuning: the loss is taken on the answer (assistant turns) only.

    Prompt, system and user tokens are masked out (label -100). Every answer is closed by a
    trained end token: the chat template's end-of-turn token (``<|im_end|>``, ``<|eot_id|>``)
    where it writes one, else EOS (``append_eos``; on chat rows only after the last answer, so
    earlier turns read as the template writes them). This holds also when the tokenizer's pad
    token equals its EOS token (padding is masked by position in the collator, never by token
    id). Nothing after the last assistant turn is kept.
    """

    name: ClassVar[str] = "sft"
    description: ClassVar[str] = "Supervised: loss on the answer / assistant turns only, EOS trained."
    Options: ClassVar[type[SFTOptions]] = SFTOptions

    def __init__(self, options: SFTOptions):
        self.options = options

    def accepts(self, row_format: str) -> bool:
        return row_format in {"prompt_completion", "chat", "preference"}

    def tokenize(self, rows: Dataset, tokenizer: PreTrainedTokenizerBase, *, max_length: int) -> Dataset:
        if "chosen" in rows.column_names:  # preference pairs: sft trains on the preferred answer
            return _chosen_answers(rows, tokenizer, max_length)
        eos = eos_id(tokenizer)
        chat = "messages" in rows.column_names
        specials = special_ids(tokenizer)

        def one(row: dict[str, Any], index: int) -> dict[str, Any]:
            if chat:
                ids, labels = self._chat(row["messages"], tokenizer, eos, specials)
            else:
                ids, labels = self._prompt_completion(row["prompt"], row["completion"], tokenizer, eos)
            truncated = len(ids) > max_length
            ids, labels = ids[:max_length], labels[:max_length]
            # ``row``: the row's index in ``rows``, so preflight can name a row after others were dropped.
            return {"input_ids": ids, "labels": labels, "length": len(ids), "truncated": truncated, "row": index}

        if is_stream(rows):  # tokenized as training reads it: rows with nothing to train are skipped there
            streamed = rows.map(one, with_indices=True, remove_columns=rows.column_names)
            return streamed.filter(lambda r: any(x != IGNORE_INDEX for x in r["labels"])).remove_columns(["truncated"])
        out = rows.map(one, with_indices=True, remove_columns=rows.column_names, desc="tokenizing (sft)")
        truncated = sum(out["truncated"])
        trained = [sum(1 for x in labels if x != IGNORE_INDEX) for labels in out["labels"]]
        empty = [i for i, n in enumerate(trained) if n == 0]
        if truncated:
            log.warning("sft: %d of %d rows were longer than max_length=%d and were truncated.", truncated, len(out), max_length)
        if empty:
            if len(empty) == len(out):
                raise DataError(
                    f"no row has any answer token left to train on (max_length={max_length}); "
                    "raise training.max_length or shorten the prompts, and check the answers are not empty."
                )
            log.warning(
                "sft: dropping %d rows with no answer token inside max_length=%d (first: row %d).",
                len(empty), max_length, out[empty[0]]["row"],
            )
            drop = set(empty)
            out = out.select([i for i in range(len(out)) if i not in drop])
        return out.remove_columns(["truncated"])

    # Answers are found by character offsets in the text tokenized once (fast tokenizers'
    # offset mapping), not by tokenizing prompt and answer apart: an answer tokenized on its own
    # can start with a piece (SentencePiece's lone "▁", a merge across the boundary) that never
    # occurs in the text the model sees at inference. Offsets also need one tokenization per row
    # where checking rendered prefixes needs one per turn.
    def collator(self, tokenizer: PreTrainedTokenizerBase) -> PadPerBatch:
        """Rows padded per batch (labels with -100), masked by position so a pad-equals-EOS token still trains."""
        return PadPerBatch(pad_token_id=int(tokenizer.pad_token_id))

    def _prompt_completion(
        self, prompt: str, completion: str, tokenizer: PreTrainedTokenizerBase, eos: int
    ) -> tuple[list[int], list[int]]:
        text = prompt + completion
        add_special = adds_special_tokens(tokenizer, text)
        if not getattr(tokenizer, "is_fast", False):  # no offsets: tokenize the two apart
            head = list(tokenizer(prompt, add_special_tokens=add_special)["input_ids"])
            answer = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
            ids, labels = [*head, *answer], [IGNORE_INDEX] * len(head) + answer
        else:
            enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
            span = AnswerSpan(len(prompt), len(text), len(text))
            ids, labels, _ = _label_spans(enc, [span], set())
        if self.options.append_eos:
            ids, labels = [*ids, eos], [*labels, eos]
        return ids, labels

    def _chat(
        self, messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase, eos: int, specials: set[int]
    ) -> tuple[list[int], list[int]]:
        """Each assistant turn trains its content and the template's end-of-turn token; EOS closes
        the last answer only where the template writes no such marker. Nothing after the last
        assistant turn is kept: it would train nothing."""
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError("an sft chat row has no 'assistant' message, so there is nothing to train on.")
        if not getattr(tokenizer, "is_fast", False):
            raise DataError("sft on chat rows needs a fast tokenizer (one with offset mappings).")
        text = render_chat(tokenizer, messages)
        spans = answer_spans(tokenizer, messages, text)
        enc = tokenizer(text, add_special_tokens=adds_special_tokens(tokenizer, text), return_offsets_mapping=True)
        ids, labels, closed = _label_spans(enc, spans, specials)
        if self.options.append_eos and not closed:
            ids, labels = [*ids, eos], [*labels, eos]
        return ids, labels


def _chosen_answers(rows: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """Preference pairs tokenized as the pairs objectives tokenize them, and trained on the chosen answer; the pair
    columns stay, so evaluation can still score both answers (``preference_accuracy``)."""
    pairs = tokenize_pairs(rows, tokenizer, max_length, "sft")
    return pairs.map(lambda r: {"input_ids": r["prompt_ids"] + r["chosen_ids"],
                                "labels": [IGNORE_INDEX] * len(r["prompt_ids"]) + r["chosen_ids"]})


def _label_spans(enc: Any, spans: list[AnswerSpan], specials: set[int]) -> tuple[list[int], list[int], bool]:
    """``(ids, labels, closed)`` for a tokenized text and its answer spans, cut after the last one.

    A token is trained when it overlaps an answer's content (so a token that straddles the
    prompt/answer boundary is trained: it holds answer text); then, within the rest of the turn,
    everything up to and including the first special token (the end-of-turn marker). ``closed``:
    the last answer ended with such a marker.
    """
    ids = list(enc["input_ids"])
    offsets = enc["offset_mapping"]
    seq = enc.sequence_ids(0)
    labels = [IGNORE_INDEX] * len(ids)
    cut, closed = len(ids), False
    for span in spans:
        text = [j for j in range(len(ids)) if seq[j] is not None]  # not added by the tokenizer (a BOS)
        content = [
            j for j in text
            if max(offsets[j][0], span.start) < min(offsets[j][1], span.content_end)
            or (offsets[j][0] == offsets[j][1] and span.start <= offsets[j][0] < span.content_end)
        ]
        after = content[-1] if content else -1
        tail = [j for j in text if j > after and span.content_end <= offsets[j][0] < span.turn_end]
        marker = next((k for k, j in enumerate(tail) if ids[j] in specials), None)
        closed = marker is not None
        trained = content + (tail[: marker + 1] if marker is not None else [])
        for j in trained:
            labels[j] = ids[j]
        if trained:
            cut = trained[-1] + 1
        else:  # an empty answer and no marker: the sequence ends where the answer would start
            cut = next((j for j in text if offsets[j][0] >= span.start), text[-1] + 1 if text else len(ids))
    return ids[:cut], labels[:cut], closed


class CausalLMOptions(PartOptions):
    packing: bool = Field(
        default=True,
        description="Concatenate texts (each closed by EOS) and cut them into blocks of max_length, "
        "so no compute goes to padding; off: each text is split on its own.",
    )


class CausalLMObjective:
    """Self-supervised language modelling: the loss is taken on every token.

    Each text is closed by EOS (unless it already ends with one, as Mistral-style chat renders
    do). A text that begins with BOS (a chat template that writes it) gets no second one. Long texts are split into blocks of ``max_length``; with
    ``packing`` the texts are concatenated first, so blocks are full.
    """

    name: ClassVar[str] = "causal-lm"
    description: ClassVar[str] = "Self-supervised: loss on every token; texts packed into max_length blocks."
    Options: ClassVar[type[CausalLMOptions]] = CausalLMOptions

    def __init__(self, options: CausalLMOptions):
        self.options = options

    def accepts(self, row_format: str) -> bool:
        return row_format in {"text", "prompt_completion", "chat", "classification"}  # text/label rows: the text

    def tokenize(self, rows: Dataset, tokenizer: PreTrainedTokenizerBase, *, max_length: int) -> Dataset:
        eos = eos_id(tokenizer)

        def texts(batch: dict[str, list[Any]]) -> list[str]:
            if "text" in batch:
                return batch["text"]
            if "messages" in batch:
                return [render_chat(tokenizer, m) for m in batch["messages"]]
            return [p + c for p, c in zip(batch["prompt"], batch["completion"], strict=True)]

        def blocks(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            docs = [ids if ids[-1:] == [eos] else [*ids, eos] for ids in _tokenize_texts(tokenizer, texts(batch))]
            streams = [[t for d in docs for t in d]] if self.options.packing else docs
            chunks = [s[i : i + max_length] for s in streams for i in range(0, len(s), max_length)]
            return {"input_ids": chunks, "labels": [list(c) for c in chunks], "length": [len(c) for c in chunks]}

        # With packing, one map batch is one stream; a large batch keeps blocks full.
        if is_stream(rows):
            return rows.map(blocks, batched=True, batch_size=1000, remove_columns=rows.column_names)
        return rows.map(
            blocks, batched=True, batch_size=1000, remove_columns=rows.column_names, desc="tokenizing (causal-lm)"
        )

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> PadPerBatch:
        """Blocks padded per batch (only a stream's last block is short)."""
        return PadPerBatch(pad_token_id=int(tokenizer.pad_token_id))



def _tokenize_texts(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, with special tokens on except where the text begins with BOS."""
    flags = [adds_special_tokens(tokenizer, t) for t in texts]
    out: list[list[int]] = [[] for _ in texts]
    for flag in (True, False):
        chosen = [i for i, f in enumerate(flags) if f is flag]
        if chosen:
            for i, ids in zip(chosen, tokenizer([texts[i] for i in chosen], add_special_tokens=flag)["input_ids"], strict=True):
                out[i] = list(ids)
    return out


# -- preference pairs, tokenized as sft tokenizes an answer (dpo, reward-model, and sft on pairs) ---------
def split_answer(ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """``(prompt_ids, answer_ids)`` of a tokenized sft row: the answer is the last trained run of tokens.

    >>> split_answer([1, 2, 3, 4, 5], [-100, -100, 3, 4, -100])
    ([1, 2], [3, 4])
    """
    trained = [j for j, label in enumerate(labels) if label != IGNORE_INDEX]
    if not trained:
        return ids, []
    end = trained[-1]
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return ids[:start], ids[start : end + 1]


def common_prefix(a: list[int], b: list[int]) -> int:
    """The length of the longest common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PairTokenizer:
    """Tokenizes prompt/chosen/rejected rows as ``sft`` tokenizes a prompt and its answer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.sft = SFTObjective(SFTOptions())
        self.tokenizer = tokenizer
        self.eos = eos_id(tokenizer)
        self.specials = special_ids(tokenizer)

    def answer(self, prompt: str | list[dict[str, str]], answer: str) -> tuple[list[int], list[int]]:
        """The prompt's and the answer's tokens (the answer closed by its trained end token)."""
        if isinstance(prompt, str):
            ids, labels = self.sft._prompt_completion(prompt, answer, self.tokenizer, self.eos)
        else:
            messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
            ids, labels = self.sft._chat([*messages, {"role": "assistant", "content": answer}], self.tokenizer, self.eos, self.specials)
        return split_answer(ids, labels)

    def pair(self, row: dict[str, Any], max_length: int) -> dict[str, Any]:
        prompt_c, chosen = self.answer(row["prompt"], row["chosen"])
        prompt_r, rejected = self.answer(row["prompt"], row["rejected"])
        shared = common_prefix(prompt_c, prompt_r)
        if shared < len(prompt_c) or shared < len(prompt_r):  # a token merged across the boundary: answers start apart
            chosen, rejected = prompt_c[shared:] + chosen, prompt_r[shared:] + rejected
        prompt = prompt_c[:shared]
        room = max(0, max_length - len(prompt))
        truncated = len(chosen) > room or len(rejected) > room
        return {"prompt_ids": prompt, "chosen_ids": chosen[:room], "rejected_ids": rejected[:room],
                "length": len(prompt) + max(len(chosen[:room]), len(rejected[:room])), "truncated": truncated}


def tokenize_pairs(rows: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int, objective: str) -> Dataset:
    """Preference rows as ``prompt_ids``/``chosen_ids``/``rejected_ids`` (and ``length``, ``row``); rows whose
    prompt leaves no room for an answer within ``max_length`` are dropped with a warning."""
    pairs = PairTokenizer(tokenizer)

    def one(row: dict[str, Any], index: int) -> dict[str, Any]:
        return {**pairs.pair(row, max_length), "row": index}

    out = rows.map(one, with_indices=True, remove_columns=rows.column_names, desc=f"tokenizing ({objective})")
    truncated = sum(out["truncated"])
    if truncated:
        log.warning("%s: %d of %d pairs were longer than max_length=%d; their answers were cut.", objective, truncated, len(out), max_length)
    empty = [i for i, (c, r) in enumerate(zip(out["chosen_ids"], out["rejected_ids"], strict=True)) if not c or not r]
    if empty:
        if len(empty) == len(out):
            raise DataError(
                f"no pair has room for its answers within max_length={max_length}; raise training.max_length or "
                "shorten the prompts."
            )
        log.warning("%s: dropping %d pairs whose prompt fills max_length=%d (first: row %d).", objective, len(empty), max_length, empty[0])
        drop = set(empty)
        out = out.select([i for i in range(len(out)) if i not in drop])
    return out.remove_columns(["truncated"])


@hookimpl
def register_objectives(register: Register) -> None:
    from tunekit.builtin.classify import ClassifyObjective

    register(SFTObjective)
    register(CausalLMObjective)
    register(ClassifyObjective)

