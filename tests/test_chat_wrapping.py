"""data.chat_template: prompt/completion rows rendered as chat turns on a model with a template."""

from __future__ import annotations

import pytest
import yaml
from datasets import Dataset

from conftest import quick
from tunekit import ConfigError, TuneConfig, Tuner
from tunekit.builtin.objectives import SFTObjective, SFTOptions
from tunekit.config import DataOptions
from tunekit.data.chat import render_chat, resolved_chat_mode, wraps_prompts
from tunekit.data.collate import IGNORE_INDEX
from tunekit.data.pipeline import prepare_rows
from tunekit.evaluation import prompts_and_references
from tunekit.preflight import boundary_findings
from tunekit.testing.tokenizers import build_family_tokenizer

ROWS = [
    {"prompt": "name a colour", "completion": "blue sky", "system": None},
    {"prompt": "name a fruit", "completion": "green apple", "system": "Be brief."},
]


def _rows(mode, tokenizer, rows=ROWS):
    return prepare_rows(rows, None, DataOptions(chat_template=mode), seed=0, wrap_prompts=wraps_prompts(mode, tokenizer))


def _trained(tokenizer, rows):
    out = SFTObjective(SFTOptions()).tokenize(rows.train, tokenizer, max_length=256)
    return [(tokenizer.decode(r["input_ids"]), tokenizer.decode([t for t in r["labels"] if t != IGNORE_INDEX])) for r in out]


def test_auto_wraps_prompt_completion_rows_as_at_inference():
    tok = build_family_tokenizer("chatml")
    rows = _rows("auto", tok)
    assert rows.format == "chat"
    assert rows.train[1]["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "name a fruit"},
        {"role": "assistant", "content": "green apple"},
    ]
    (text, trained), _ = _trained(tok, rows)
    prompt = render_chat(tok, [{"role": "user", "content": "name a colour"}], add_generation_prompt=True)
    assert text.startswith(prompt)  # the prompt training sees is the one generation sends
    assert trained == "blue sky<|im_end|>"  # only the answer and its end-of-turn token train


@pytest.mark.parametrize("family", ["llama3", "mistral"])
def test_labels_mask_all_but_the_answer_in_other_families(family):
    tok = build_family_tokenizer(family)
    trained = [t for _, t in _trained(tok, _rows("always", tok))]
    eot = "<|eot_id|>" if family == "llama3" else "</s>"
    assert [t.strip() for t in trained] == [f"blue sky{eot}", f"green apple{eot}"]


def test_never_concatenates_and_always_without_a_template_fails():
    tok = build_family_tokenizer("chatml")
    rows = _rows("never", tok)
    assert rows.format == "prompt_completion"
    (text, trained), _ = _trained(tok, rows)
    assert text == "name a colourblue sky<|endoftext|>" and trained == "blue sky<|endoftext|>"
    tok.chat_template = None
    assert _rows("auto", tok).format == "prompt_completion"
    with pytest.raises(ConfigError, match="data.chat_template"):
        wraps_prompts("always", tok)


def test_a_template_string_wraps_and_misspelt_modes_are_refused():
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
    assert DataOptions(chat_template=template).chat_template == template
    with pytest.raises(ConfigError, match="auto"):
        TuneConfig(model="x", data={"chat_template": "Auto"})
    assert resolved_chat_mode("auto", build_family_tokenizer("chatml")) == "always"
    tok = build_family_tokenizer("chatml")
    tok.chat_template = None
    assert resolved_chat_mode("auto", tok) == "never"


def test_evaluation_prompts_wrapped_rows_as_a_chat():
    tok = build_family_tokenizer("chatml")
    prompts, references = prompts_and_references(_rows("auto", tok).train, "chat")
    assert prompts[0] == [{"role": "user", "content": "name a colour"}] and references == ["blue sky", "green apple"]


def test_preflight_warns_on_glued_rows_only():
    glued = Dataset.from_list([{"prompt": "2+2=", "completion": "4"}, {"prompt": "Q:\n", "completion": "A"}])
    (finding,) = boundary_findings(glued, "prompt_completion")
    assert finding.severity == "warning" and finding.code == "prompt-glued-to-answer"
    assert "1 of 2" in finding.message and "'2+2='" in finding.message and "chat_template" in finding.message
    separated = Dataset.from_list([{"prompt": "2+2=", "completion": " 4"}, {"prompt": "Q:\n", "completion": "A"}])
    assert boundary_findings(separated, "prompt_completion") == []


def test_tuner_auto_on_an_instruct_model_records_always(tiny_llama, tiny_gpt2, tmp_path):
    rows = [{"prompt": "name a colour", "completion": "blue sky"}] * 4
    tuner = Tuner(model=str(tiny_llama), strategy="full", output_dir=str(tmp_path / "r"), training=quick(max_steps=1, batch_size=4))
    report = tuner.preflight(rows, estimate=False)
    assert report.row_format == "chat" and "prompt-glued-to-answer" not in [f.code for f in report.findings]
    assert tuner.config.data.chat_template == "always"
    tuner.fit(rows)
    saved = yaml.safe_load((tmp_path / "r" / "model" / "tunekit.yaml").read_text())
    assert saved["data"]["chat_template"] == "always"
    reloaded = Tuner.load(tmp_path / "r")
    assert reloaded._prepare(rows, split_eval=False).format == "chat"  # a reloaded run prompts as it trained
    plain = Tuner(model=str(tiny_gpt2), strategy="full")  # no template: today's concatenation, and the warning
    report = plain.preflight(rows, estimate=False)
    assert report.row_format == "prompt_completion" and plain.config.data.chat_template == "never"
    assert "prompt-glued-to-answer" in [f.code for f in report.findings]
    with pytest.raises(ConfigError, match="always"):
        Tuner(model=str(tiny_gpt2), strategy="full", data={"chat_template": "always"}).generate("hi")
