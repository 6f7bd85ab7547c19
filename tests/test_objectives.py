"""Objectives put labels where they claim, and the collator pads per batch."""

from __future__ import annotations

import pytest
from datasets import Dataset

from tunekit.builtin.objectives import CausalLMObjective, CausalLMOptions, SFTObjective, SFTOptions
from tunekit.data.collate import IGNORE_INDEX, PadPerBatch
from tunekit.models.loading import ModelSource, load_tokenizer
from tunekit.testing import chat_rows, sft_rows


@pytest.fixture(scope="module")
def gpt2_tok(tiny_gpt2):
    return load_tokenizer(ModelSource("local", str(tiny_gpt2)))


@pytest.fixture(scope="module")
def llama_tok(tiny_llama):
    return load_tokenizer(ModelSource("local", str(tiny_llama)))


def test_sft_masks_the_prompt_and_trains_eos_when_pad_equals_eos(gpt2_tok):
    assert gpt2_tok.pad_token_id == gpt2_tok.eos_token_id  # the trap
    row = sft_rows(1)[0]
    assert row == {"prompt": "Reverse: apple plum blue\nAnswer:", "completion": " blue plum apple"}
    out = SFTObjective(SFTOptions()).tokenize(Dataset.from_list([row]), gpt2_tok, max_length=128)[0]
    n_prompt = next(i for i, label in enumerate(out["labels"]) if label != IGNORE_INDEX)
    assert out["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert out["labels"][n_prompt:] == out["input_ids"][n_prompt:]
    # the masked part is exactly the prompt, the trained part exactly the answer and EOS (written out by hand)
    assert gpt2_tok.decode(out["input_ids"][:n_prompt]) == "Reverse: apple plum blue\nAnswer:"
    assert gpt2_tok.decode(out["labels"][n_prompt:]) == " blue plum apple<|endoftext|>"
    assert out["input_ids"][-1] == gpt2_tok.eos_token_id and out["labels"][-1] == gpt2_tok.eos_token_id
    # and the collator keeps it: padding is masked by position, not by token id
    batch = PadPerBatch(gpt2_tok.pad_token_id)([out, {"input_ids": out["input_ids"] + [5, 6], "labels": out["labels"] + [5, 6]}])
    assert batch["labels"][0, len(out["labels"]) - 1] == gpt2_tok.eos_token_id
    assert batch["labels"][0, len(out["labels"]) :].tolist() == [IGNORE_INDEX, IGNORE_INDEX]
    assert batch["attention_mask"][0].tolist() == [1] * len(out["labels"]) + [0, 0]


def test_sft_chat_trains_assistant_turns_only(llama_tok):
    row = chat_rows(1)[0]
    out = SFTObjective(SFTOptions()).tokenize(Dataset.from_list([row]), llama_tok, max_length=256)[0]
    trained = [t for t, label in zip(out["input_ids"], out["labels"], strict=True) if label != IGNORE_INDEX]
    masked = [t for t, label in zip(out["input_ids"], out["labels"], strict=True) if label == IGNORE_INDEX]
    # written out by hand: the answer and its end of turn train; BOS, system, user and the assistant header do not
    assert llama_tok.decode(trained) == "blue plum apple<|im_end|>"
    assert llama_tok.decode(masked) == (
        "<s><|im_start|>system\nYou reverse words.<|im_end|>\n"
        "<|im_start|>user\nReverse: apple plum blue\nAnswer:<|im_end|>\n<|im_start|>assistant\n"
    )


def test_sft_drops_rows_with_nothing_to_train_and_errors_when_none_left(gpt2_tok):
    from tunekit import DataError

    rows = Dataset.from_list([{"prompt": "red " * 50, "completion": " blue"}, sft_rows(1)[0]])
    out = SFTObjective(SFTOptions()).tokenize(rows, gpt2_tok, max_length=30)
    assert len(out) == 1
    with pytest.raises(DataError, match="max_length"):
        SFTObjective(SFTOptions()).tokenize(rows.select([0]), gpt2_tok, max_length=30)


def test_sft_chat_without_assistant_is_an_error(llama_tok):
    from tunekit import DataError

    rows = Dataset.from_list([{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError, match="no 'assistant' message"):
        SFTObjective(SFTOptions()).tokenize(rows, llama_tok, max_length=64)


@pytest.mark.parametrize("packing", [True, False])
def test_causal_lm_trains_every_token_in_blocks(gpt2_tok, packing):
    texts = Dataset.from_list([{"text": "red green blue " * 20}, {"text": "cat dog"}])
    out = CausalLMObjective(CausalLMOptions(packing=packing)).tokenize(texts, gpt2_tok, max_length=16)
    assert all(len(ids) <= 16 for ids in out["input_ids"])
    assert all(ids == labels for ids, labels in zip(out["input_ids"], out["labels"], strict=True))
    # every token of both texts, in order, each text closed by EOS (written out by hand)
    flat = [t for ids in out["input_ids"] for t in ids]
    assert gpt2_tok.decode(flat) == "red green blue " * 20 + "<|endoftext|>" + "cat dog<|endoftext|>"
    if not packing:  # a row's blocks hold only that row
        assert gpt2_tok.decode(out["input_ids"][-1]) == "cat dog<|endoftext|>"
    if packing:
        assert all(len(ids) == 16 for ids in out["input_ids"][:-1])


def test_collator_pads_to_the_longest_in_the_batch_not_max_length():
    batch = PadPerBatch(pad_token_id=0)([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4], "labels": [4]}])
    assert batch["input_ids"].shape == (2, 3)
    assert batch["input_ids"][1].tolist() == [4, 0, 0]
    assert batch["labels"][1].tolist() == [4, IGNORE_INDEX, IGNORE_INDEX]


def test_objective_chosen_from_the_row_format(tiny_gpt2, tmp_path):
    from tests.conftest import quick

    from tunekit import ConfigError, Tuner
    from tunekit.testing import text_rows

    assert Tuner(model=str(tiny_gpt2), output_dir=str(tmp_path / "a"), training=quick(max_steps=1)).fit(text_rows(8)).objective == "causal-lm"
    assert Tuner(model=str(tiny_gpt2), output_dir=str(tmp_path / "b"), training=quick(max_steps=1)).fit(sft_rows(8)).objective == "sft"
    with pytest.raises(ConfigError, match="objective: 'sft' cannot train on 'text' rows. Use objective='causal-lm'"):
        Tuner(model=str(tiny_gpt2), objective="sft", output_dir=str(tmp_path / "c")).fit(text_rows(8))
