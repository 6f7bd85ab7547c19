"""Chat-template rendering shared by objectives and generation."""

from __future__ import annotations

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


def render_generation_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict[str, str]]
) -> tuple[str, bool]:
    """``(text, add_special_tokens)`` for a text prompt or a chat to be answered."""
    if isinstance(prompt, str):
        return prompt, True
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        from tunekit.data.rows import _check_messages

        _check_messages(prompt, "the prompt")
        return render_chat(tokenizer, prompt, add_generation_prompt=True), False
    raise DataError(f"generate takes a string or a list of {{'role', 'content'}} messages, got {type(prompt).__name__}.")


def eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The EOS token id, or a DataError: without one a tuned model could not learn to stop."""
    if tokenizer.eos_token_id is None:
        raise DataError(
            "the tokenizer has no EOS token, so a tuned model could not learn to stop. Give the "
            "tokenizer an eos_token (tokenizer.eos_token = '...') before training."
        )
    return int(tokenizer.eos_token_id)
