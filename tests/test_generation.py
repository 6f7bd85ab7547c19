"""tunekit.generation gives the greedy answers of plain batched ``model.generate``."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunekit.evaluation import generate_answers, stop_token_ids
from tunekit.generation import greedy_token_ids, shared_prefix_length, supports_fast_greedy
from tunekit.testing import WORDS, plain_greedy_answers


def prompts_for(tokenizer: Any, n: int, chat: bool) -> list[Any]:
    rng = random.Random(3)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12) + (20 if chat else 0))) for _ in range(n)]
    if chat:  # a shared system prompt: the chat template's prefix is common to every prompt
        return [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": t}] for t in texts]
    return texts


def encode(tokenizer: Any, prompts: list[Any]) -> list[list[int]]:
    from tunekit.data.chat import render_generation_prompt

    out = []
    for p in prompts:
        text, special = render_generation_prompt(tokenizer, p)
        out.append(list(tokenizer(text, add_special_tokens=special)["input_ids"]))
    return out


def with_early_stops(model: Any, tokenizer: Any, encoded: list[list[int]], max_new_tokens: int) -> None:
    """Make some rows stop early: add as end tokens ones the model produces mid-answer in some rows only."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    seen: Counter[int] = Counter()
    with torch.no_grad():
        for e in encoded:
            gen = model.generate(input_ids=torch.tensor([e]), do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                 eos_token_id=stop_token_ids(model, tokenizer))
            seen.update(set(gen[0, len(e) + 1 :].tolist()))
    some = [t for t, c in seen.most_common() if c < len(encoded)][:2]  # in some rows, not all
    assert some
    model.generation_config.eos_token_id = [*stop_token_ids(model, tokenizer), *some]


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_answers_match_plain_generate(tiny_model: Path, chat: bool, batch_size: int) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    if chat and not tokenizer.chat_template:
        pytest.skip("the tiny gpt2 tokenizer has no chat template")
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    assert supports_fast_greedy(model)
    prompts = prompts_for(tokenizer, 10, chat)
    encoded = encode(tokenizer, prompts)
    with_early_stops(model, tokenizer, encoded, 12)
    expected = plain_greedy_answers(model, tokenizer, encoded, batch_size=batch_size, max_new_tokens=12)
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the fast path must not call model.generate")

    model.generate = refuse  # type: ignore[method-assign]
    got = generate_answers(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=12)
    assert got == expected
    # both kinds of rows are there: stopped early, and ran to the budget
    ids = greedy_token_ids(model, encoded, batch_size=batch_size, max_new_tokens=12,
                           stop_ids=stop_token_ids(model, tokenizer), pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    assert ids is not None
    lengths = {len(t) for t in ids}
    assert 12 in lengths and min(lengths) < 12


def test_pad_is_eos_and_shared_prefix(tiny_gpt2: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    assert tokenizer.pad_token_id is None  # generate_answers pads with EOS
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    prompts = ["Question: " + p for p in prompts_for(tokenizer, 9, chat=False)]
    encoded = encode(tokenizer, prompts)
    assert shared_prefix_length(encoded) >= 2
    expected = plain_greedy_answers(model, tokenizer, encoded, batch_size=4, max_new_tokens=6)
    assert generate_answers(model, tokenizer, prompts, batch_size=4, max_new_tokens=6) == expected


def test_one_token_budget_and_one_prompt(tiny_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    for prompts in (["one"], ["one two", "one two three four"]):
        encoded = encode(tokenizer, prompts)
        assert generate_answers(model, tokenizer, prompts, max_new_tokens=1) == plain_greedy_answers(
            model, tokenizer, encoded, batch_size=8, max_new_tokens=1)


def test_a_generation_config_that_changes_greedy_goes_through_generate(tiny_gpt2: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    model.generation_config.repetition_penalty = 1.3
    assert not supports_fast_greedy(model)
    prompts = prompts_for(tokenizer, 5, chat=False)
    expected = plain_greedy_answers(model, tokenizer, encode(tokenizer, prompts), batch_size=8, max_new_tokens=8)
    assert generate_answers(model, tokenizer, prompts, max_new_tokens=8) == expected


def test_shared_prefix_length() -> None:
    assert shared_prefix_length([]) == 0
    assert shared_prefix_length([[1, 2, 3]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2], [1, 2, 4]]) == 2
    assert shared_prefix_length([[5], [1, 2]]) == 0


def test_a_lora_model_gives_the_same_answers(tiny_llama: Path) -> None:
    from peft import LoraConfig, get_peft_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).eval()
    assert supports_fast_greedy(model)
    prompts = prompts_for(tokenizer, 6, chat=True)
    expected = plain_greedy_answers(model, tokenizer, encode(tokenizer, prompts), batch_size=4, max_new_tokens=8)
    assert generate_answers(model, tokenizer, prompts, batch_size=4, max_new_tokens=8) == expected
