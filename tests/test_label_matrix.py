"""The label path across tokenizer families: objective x row format x tokenizer family.

For every cell: exactly the assistant's text plus its end-of-turn token is trained (the trained
positions are decoded and compared with strings written out here, not re-tokenized the way the
objective does it); one BOS per sequence where the family has one, none where it has none;
nothing after the last assistant turn is trained; and the ids are what the model sees at
inference (the prompt or the template with ``add_generation_prompt=True``, then the answer).
"""

from __future__ import annotations

from typing import Any

import pytest
from datasets import Dataset

from tunekit.builtin.objectives import CausalLMObjective, CausalLMOptions, SFTObjective, SFTOptions
from tunekit.data.chat import render_generation_prompt
from tunekit.data.collate import IGNORE_INDEX
from tunekit.data.rows import normalise_rows
from tunekit.testing.tokenizers import FAMILIES, build_family_tokenizer

SYSTEM = {"role": "system", "content": "You reverse words."}
USER_1 = {"role": "user", "content": "red cat dog"}
ANSWER_1 = {"role": "assistant", "content": "dog cat red"}
USER_2 = {"role": "user", "content": "one two three"}
ANSWER_2 = {"role": "assistant", "content": "three two one"}
GREETING = {"role": "assistant", "content": "Hello, I reverse words."}

ROWS: dict[str, dict[str, Any]] = {
    "prompt_completion": {"prompt": "Reverse: red cat dog\nAnswer:", "completion": " dog cat red"},
    "instruction": {"instruction": "Reverse the words.", "input": "red cat dog", "output": "dog cat red"},
    "chat_with_system": {"messages": [SYSTEM, USER_1, ANSWER_1]},
    "multi_turn": {"messages": [SYSTEM, USER_1, ANSWER_1, USER_2, ANSWER_2]},
    "ends_on_user": {"messages": [USER_1, ANSWER_1, USER_2]},
    "assistant_first": {"messages": [GREETING, USER_1, ANSWER_1]},
}

# What each family's template writes around an answer, written out by hand. ``last``: the
# family's template has no end-of-turn marker (gpt2's plain one), so the objective closes the
# last answer with EOS.
FAMILY = {
    "gpt2": {"bos": None, "eos": "<|endoftext|>", "turn": "{}", "last": "{}<|endoftext|>"},
    "mistral": {"bos": "<s>", "eos": "</s>", "turn": " {}</s>", "last": " {}</s>"},
    "llama3": {"bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "turn": "{}<|eot_id|>", "last": "{}<|eot_id|>"},
    "chatml": {"bos": None, "eos": "<|endoftext|>", "turn": "{}<|im_end|>", "last": "{}<|im_end|>"},
}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> tuple[str, Any]:
    return request.param, build_family_tokenizer(request.param)


def _decode(tok: Any, ids: list[int]) -> str:
    return str(tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))


def trained_runs(tok: Any, ids: list[int], labels: list[int]) -> list[str]:
    """The text of each run of trained positions, decoded in context (so a SentencePiece
    word-start ``▁`` reads as the space it stands for)."""
    runs, start = [], None
    for j, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = j
        elif label == IGNORE_INDEX and start is not None:
            before, upto = _decode(tok, ids[:start]), _decode(tok, ids[:j])
            assert upto.startswith(before), (before, upto)
            runs.append(upto[len(before):])
            start = None
    return runs


def _rows(name: str) -> Dataset:
    _, rows = normalise_rows(Dataset.from_list([ROWS[name]]))
    return rows


def _prompt_and_answers(name: str, fam: dict[str, str]) -> tuple[str | None, list[str]]:
    """The prompt given to ``generate`` (text rows) and the trained strings, by hand."""
    if name == "prompt_completion":
        return "Reverse: red cat dog\nAnswer:", [" dog cat red" + fam["eos"]]
    if name == "instruction":
        return "Reverse the words.\n\nred cat dog\n\n", ["dog cat red" + fam["eos"]]
    answers = [m["content"] for m in ROWS[name]["messages"] if m["role"] == "assistant"]
    return None, [fam["turn"].format(a) for a in answers[:-1]] + [fam["last"].format(answers[-1])]


def _check_bos(tok: Any, fam: dict[str, str], ids: list[int]) -> None:
    if fam["bos"] is None:
        assert tok.bos_token_id is None or ids[0] != tok.bos_token_id
    else:
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1, tok.convert_ids_to_tokens(ids[:3])


def _inference_ids(tok: Any, prompt: str | list[dict[str, str]]) -> list[int]:
    """What ``Tuner.generate`` feeds the model for this prompt."""
    text, add_special = render_generation_prompt(tok, prompt)
    return list(tok(text, add_special_tokens=add_special)["input_ids"])


ROW_NAMES = list(ROWS)


@pytest.mark.parametrize("row", ROW_NAMES)
def test_sft_trains_exactly_the_answers(family, row):
    name, tok = family
    fam = FAMILY[name]
    out = SFTObjective(SFTOptions()).tokenize(_rows(row), tok, max_length=512)[0]
    ids, labels = out["input_ids"], out["labels"]
    prompt, expected = _prompt_and_answers(row, fam)
    assert trained_runs(tok, ids, labels) == expected, tok.convert_ids_to_tokens(ids)
    _check_bos(tok, fam, ids)
    assert labels[-1] != IGNORE_INDEX  # nothing after the last answer's end token, trained or not
    if prompt is not None:
        p = _inference_ids(tok, prompt)
        assert ids[: len(p)] == p and set(labels[: len(p)]) == {IGNORE_INDEX}
        assert labels[len(p):] == ids[len(p):]
        return
    messages = ROWS[row]["messages"]
    for k, m in enumerate(messages):
        if m["role"] != "assistant" or k == 0:  # generate takes no empty conversation
            continue
        p = _inference_ids(tok, messages[:k])
        assert ids[: len(p)] == p, (tok.convert_ids_to_tokens(ids[: len(p) + 2]), tok.convert_ids_to_tokens(p))
        assert labels[len(p) - 1] == IGNORE_INDEX and labels[len(p)] == ids[len(p)]


@pytest.mark.parametrize("row", ROW_NAMES)
def test_causal_lm_trains_every_token_with_one_bos(family, row):
    name, tok = family
    fam = FAMILY[name]
    out = CausalLMObjective(CausalLMOptions(packing=False)).tokenize(_rows(row), tok, max_length=512)
    assert len(out) == 1
    ids, labels = out[0]["input_ids"], out[0]["labels"]
    assert labels == ids
    _check_bos(tok, fam, ids)
    assert ids[-1] == tok.eos_token_id and ids[-2] != tok.eos_token_id  # closed by one EOS
    text = _decode(tok, ids)
    if "messages" in ROWS[row]:
        messages = ROWS[row]["messages"]
        for m in messages:
            assert m["content"] in text
        last = max(k for k, m in enumerate(messages) if m["role"] == "assistant")
        if last:
            p = _inference_ids(tok, messages[:last])
            assert ids[: len(p)] == p
    else:
        prompt, _ = _prompt_and_answers(row, fam)
        p = _inference_ids(tok, prompt)
        assert ids[: len(p)] == p and "dog cat red" in text


def test_prompt_completion_is_tokenized_as_one_text():
    """A completion tokenized on its own gets a word-start piece the whole text never has."""
    tok = build_family_tokenizer("mistral")
    rows = Dataset.from_list([{"prompt": "Reverse: red cat dog\nAnswer:", "completion": " dog cat red"}])
    out = SFTObjective(SFTOptions()).tokenize(rows, tok, max_length=64)[0]
    whole = tok("Reverse: red cat dog\nAnswer: dog cat red")["input_ids"]
    assert out["input_ids"] == [*whole, tok.eos_token_id]
    assert "▁" not in tok.convert_ids_to_tokens(out["input_ids"])  # no lone boundary piece


def test_append_eos_false_still_trains_the_templates_end_of_turn():
    rows = Dataset.from_list([ROWS["chat_with_system"]])
    chatml = build_family_tokenizer("chatml")
    out = SFTObjective(SFTOptions(append_eos=False)).tokenize(rows, chatml, max_length=256)[0]
    assert trained_runs(chatml, out["input_ids"], out["labels"]) == ["dog cat red<|im_end|>"]
    gpt2 = build_family_tokenizer("gpt2")
    out = SFTObjective(SFTOptions(append_eos=False)).tokenize(rows, gpt2, max_length=256)[0]
    assert trained_runs(gpt2, out["input_ids"], out["labels"]) == ["dog cat red"]
    pc = Dataset.from_list([ROWS["prompt_completion"]])
    out = SFTObjective(SFTOptions(append_eos=False)).tokenize(pc, gpt2, max_length=256)[0]
    assert trained_runs(gpt2, out["input_ids"], out["labels"]) == [" dog cat red"]


def test_render_generation_prompt_adds_bos_only_when_the_template_does_not():
    llama3 = build_family_tokenizer("llama3")
    text, add_special = render_generation_prompt(llama3, [USER_1])
    assert text.startswith("<|begin_of_text|>") and add_special is False
    chatml = build_family_tokenizer("chatml")
    assert render_generation_prompt(chatml, [USER_1])[1] is True  # no BOS to add: nothing changes


EMPTY_ANSWER_ROWS = {
    "prompt_completion": [
        {"prompt": "Reverse: red cat dog\nAnswer:", "completion": " dog cat red"},
        {"prompt": "Reverse: one two\nAnswer:", "completion": ""},
        {"prompt": "Reverse: six ten\nAnswer:", "completion": "  "},
    ],
    "chat": [
        {"messages": [USER_1, ANSWER_1]},
        {"messages": [USER_2, {"role": "assistant", "content": ""}]},
        {"messages": [SYSTEM, USER_2, {"role": "assistant", "content": " \n"}]},
    ],
}


@pytest.mark.parametrize("fmt", list(EMPTY_ANSWER_ROWS))
@pytest.mark.parametrize("name", ["gpt2", "mistral", "chatml"])
def test_empty_answers_are_rows_with_nothing_to_train(name, fmt):
    from tunekit.builtin.objectives import SFTObjective
    from tunekit.preflight import label_findings, token_stats

    tok = build_family_tokenizer(name)
    rows = Dataset.from_list(EMPTY_ANSWER_ROWS[fmt])
    stats, full = token_stats(SFTObjective(SFTOptions()), rows, tok, 512)
    assert stats.rows == 3 and stats.rows_without_trained_tokens == 2
    errors = [f for f in label_findings("sft", full, tok) if f.severity == "error"]
    assert [f.code for f in errors] == ["rows-with-empty-answers"]
    assert "2 of 3 rows" in errors[0].message and "first: row 1" in errors[0].message


def test_empty_answer_row_is_named_by_its_index_after_dropped_rows():
    from tunekit.preflight import label_findings

    tok = build_family_tokenizer("gpt2")
    rows = Dataset.from_list([
        {"prompt": "red " * 60, "completion": " blue"},  # longer than max_length: dropped
        *EMPTY_ANSWER_ROWS["prompt_completion"][::-1],
    ])
    out = SFTObjective(SFTOptions()).tokenize(rows, tok, max_length=32)
    assert len(out) == 3
    (error,) = [f for f in label_findings("sft", out, tok) if f.severity == "error"]
    assert "2 of 3 rows" in error.message and "first: row 1" in error.message


def test_an_end_of_turn_token_other_than_eos_counts_as_trained_end():
    from tunekit.preflight import label_findings

    tok = build_family_tokenizer("chatml")  # EOS <|endoftext|>, turns end with <|im_end|>
    out = SFTObjective(SFTOptions()).tokenize(Dataset.from_list([ROWS["chat_with_system"]] * 2), tok, max_length=256)
    assert tok.eos_token_id not in out[0]["labels"]
    assert not [f for f in label_findings("sft", out, tok) if f.code == "eos-not-trained"]


def test_fit_stops_on_empty_answers(tiny_gpt2, tmp_path):
    from tests.conftest import quick

    from tunekit import Tuner
    from tunekit.preflight import PreflightError
    from tunekit.testing import sft_rows

    rows = [*sft_rows(6), {"prompt": "Reverse: red cat dog\nAnswer:", "completion": ""}]
    tuner = Tuner(model=str(tiny_gpt2), output_dir=str(tmp_path / "r"), training=quick(max_steps=1))
    report = tuner.preflight(rows, estimate=False)
    assert "rows with nothing to train: 1" in report.summary()
    assert "rows-with-empty-answers" in [f.code for f in report.errors]
    with pytest.raises(PreflightError, match=r"(?s)rows-with-empty-answers.*1 of 7 rows.*first: row 6"):
        tuner.fit(rows)
    assert tuner.fit(rows, ignore_preflight_errors=True).steps == 1


def test_generation_stops_at_the_end_of_turn_token_sft_trains():
    """sft trains ``<|im_end|>`` as the end of an answer; generation must stop there, not only at EOS."""
    from tunekit.evaluation import stop_token_ids

    tok = build_family_tokenizer("chatml")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end != tok.eos_token_id
    assert stop_token_ids(None, tok) == [tok.eos_token_id, im_end]
    plain = build_family_tokenizer("gpt2")  # a template with no end-of-turn marker: EOS alone
    assert stop_token_ids(None, plain) == [plain.eos_token_id]
