"""Chat-template rendering, and where a template puts the answers, shared by objectives,
generation and preflight."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunekit.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], **kwargs: Any) -> str:
    """Render messages with the tokenizer's chat template, as text."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "chat rows need a chat template, and this tokenizer has none. Set "
            "data.chat_template to a Jinja template, or give prompt/completion rows instead."
        )
    try:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, **kwargs))
    except Exception as exc:
        raise DataError(f"the chat template failed on a row ({type(exc).__name__}: {exc}).") from None


def wraps_prompts(mode: str, tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether prompt/completion rows are rendered as chat turns under ``data.chat_template=mode``.

    ``auto`` (and a template string, already set on the tokenizer): when the tokenizer has a chat
    template, so an instruct model is trained the way it is prompted. ``always``: the same, and a
    ``ConfigError`` without a template. ``never``: the texts are concatenated as they are.
    """
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if mode == "never":
        return False
    if mode == "always" and not has_template:
        from tunekit.errors import ConfigError, Problem

        raise ConfigError([Problem("data.chat_template", (
            "'always' renders prompt/completion rows with the chat template, and this tokenizer has none. "
            "Give a Jinja template as data.chat_template, or use 'auto'/'never' to train on the texts as they are."))])
    return has_template


def resolved_chat_mode(mode: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """``auto`` resolved for this tokenizer (``always`` or ``never``), as a run's saved config records
    it, so a reloaded run prompts as it trained; ``always``, ``never`` and a template stay as given."""
    if mode != "auto":
        wraps_prompts(mode, tokenizer)  # "always" without a template fails here, at load time
        return mode
    return "always" if wraps_prompts(mode, tokenizer) else "never"


def as_chat(prompt: str, completion: str, system: str | None = None) -> list[dict[str, str]]:
    """A prompt/completion row as the conversation an instruct model is prompted with."""
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


def render_generation_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict[str, str]]
) -> tuple[str, bool]:
    """``(text, add_special_tokens)`` for a text prompt or a chat to be answered."""
    if isinstance(prompt, str):
        return prompt, adds_special_tokens(tokenizer, prompt)
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        from tunekit.data.rows import _check_messages

        _check_messages(prompt, "the prompt")
        text = render_chat(tokenizer, prompt, add_generation_prompt=True)
        return text, adds_special_tokens(tokenizer, text)
    raise DataError(f"generate takes a string or a list of {{'role', 'content'}} messages, got {type(prompt).__name__}.")


def eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The EOS token id, or a DataError: without one a tuned model could not learn to stop."""
    if tokenizer.eos_token_id is None:
        raise DataError(
            "the tokenizer has no EOS token, so a tuned model could not learn to stop. Give the "
            "tokenizer an eos_token (tokenizer.eos_token = '...') before training."
        )
    return int(tokenizer.eos_token_id)


def adds_special_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> bool:
    """Whether ``text`` is tokenized with special tokens on: not when it already begins with BOS.

    Llama-3, Mistral and Zephyr style templates write ``bos_token`` themselves; tokenizing their
    output with special tokens on gives two BOS tokens. Training and generation both ask here,
    so the model sees at inference the ids it was trained on.
    """
    bos = getattr(tokenizer, "bos_token", None)
    return not (isinstance(bos, str) and bos and text.startswith(bos))


def special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Ids of every special token: BOS/EOS/pad/... and added tokens marked special (``<|im_end|>``)."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", []) if i is not None}
    for i, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "special", False):
            ids.add(int(i))
    return ids


# Stands in for an answer to find where a template puts it; templates that trim or check the
# content leave it alone.
SENTINEL = "TUNEKIT_ANSWER_7f3a"


@dataclass(frozen=True)
class AnswerSpan:
    """Character offsets of one assistant turn in the rendered conversation.

    ``start``: where the answer starts (the end of the generation prompt for this turn);
    ``content_end``: where its content ends; ``turn_end``: where the template's rendering of the
    turn ends (after its end-of-turn marker and any newline).
    """

    start: int
    content_end: int
    turn_end: int


def _render_or_none(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], **kwargs: Any) -> str | None:
    try:
        return render_chat(tokenizer, messages, **kwargs)
    except DataError:  # transformers refuses an empty conversation; some templates fail on one
        return None


def answer_spans(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], text: str) -> list[AnswerSpan]:
    """Where each assistant turn of ``messages`` lies in ``text`` (their rendering), in order.

    An answer starts where the template with ``add_generation_prompt=True`` for the turns before
    it ends, so training sees what generation sees. A first turn by the assistant has no such
    prompt (transformers renders no empty conversation): there, and for templates whose
    generation prompt is no prefix of the turn, the answer starts where the template puts its
    content. A ``DataError`` when the template renders no conversation as a prefix of its
    continuation (the turns could not be located).
    """
    spans: list[AnswerSpan] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        upto = render_chat(tokenizer, messages[: i + 1])
        start = None
        prompt = _render_or_none(tokenizer, messages[:i], add_generation_prompt=True) if i else None
        if prompt is not None and upto.startswith(prompt):
            start = len(prompt)
        else:
            marked = _render_or_none(tokenizer, [*messages[:i], {**message, "content": SENTINEL}]) or ""
            at = marked.find(SENTINEL)
            if at >= 0 and upto.startswith(marked[:at]):
                start = at
        if start is None or not text.startswith(upto):
            raise DataError(
                "the chat template does not render a conversation as a prefix of its "
                "continuation, so the assistant turns cannot be located; use a template "
                "that does (most do), or prompt/completion rows."
            )
        content = message["content"].strip()
        at = upto.find(content, start) if content else start
        spans.append(AnswerSpan(start, at + len(content) if at >= 0 else len(upto), len(upto)))
    return spans


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token the chat template closes an assistant turn with (``<|im_end|>``,
    ``<|eot_id|>``, ``</s>``), or None (no template, or one without such a marker)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": SENTINEL}]
    text = _render_or_none(tokenizer, messages)
    if text is None or SENTINEL not in text:
        return None
    after = text[text.index(SENTINEL) + len(SENTINEL):]
    specials = special_ids(tokenizer)
    for token in tokenizer(after, add_special_tokens=False)["input_ids"]:
        if int(token) in specials:
            return int(token)
    return None


def answer_is_empty(tokenizer: PreTrainedTokenizerBase, trained: list[int], specials: set[int] | None = None) -> bool:
    """Whether the trained ids hold no answer: nothing, or only special and whitespace tokens."""
    specials = special_ids(tokenizer) if specials is None else specials
    content = [t for t in trained if t not in specials]
    return not content or not str(tokenizer.decode(content, skip_special_tokens=True)).strip()
