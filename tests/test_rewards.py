"""The reward parts: the built-ins score right, build_rewards reports problems, the contract check holds."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tunekit import ConfigError, DataError, TunekitError, UnknownPartError, hookimpl
from tunekit.config import build_rewards
from tunekit.errors import ModelLoadError
from tunekit.parts import KIND_PLURALS, KINDS, NoOptions, Reward
from tunekit.plugins import BUILTIN_PLUGIN, get_registry, register_plugin
from tunekit.testing.contracts import ContractViolation, check_reward

PROMPTS = ["Q1", "Q2", "Q3"]


def score(spec, completions, references=None, prompts=None):
    (reward,) = build_rewards([spec])
    return reward.score(
        completions, prompts=prompts or [f"Q{i}" for i in range(len(completions))],
        references=references if references is not None else [None] * len(completions),
    )


# -- the kind --------------------------------------------------------------------------------------------
def test_reward_is_a_kind_with_builtins_that_document_their_options():
    assert "reward" in KINDS and KIND_PLURALS["reward"] == "rewards"
    builtin = {r.name: r for r in get_registry("reward") if r.plugin == BUILTIN_PLUGIN}
    assert set(builtin) == {"exact_match", "regex", "length", "model"}
    for reg in builtin.values():
        assert reg.cls.description and "\n" not in reg.cls.description
        assert reg.options_model.model_config.get("extra") == "forbid"
        for field, info in reg.options_model.model_fields.items():
            assert info.description, f"reward {reg.name!r}: option {field!r} has no description"


def test_build_rewards_needs_no_torch():
    code = (
        "import sys; from tunekit.config import build_rewards; "
        "rs = build_rewards(['exact_match', {'name': 'regex', 'pattern': 'a+'}, {'name': 'length', 'max_chars': 4}]); "
        "print([r.score(['aa'], prompts=['p'], references=['aa']) for r in rs]); assert 'torch' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[[1.0], [1.0], [0.0]]"


# -- exact_match ---------------------------------------------------------------------------------------
def test_exact_match_hits_and_misses():
    assert score("exact_match", [" Paris ", "paris", "Lyon"], ["Paris", "Paris", "Paris"]) == [1.0, 0.0, 0.0]
    assert score({"name": "exact_match", "case_fold": True}, ["paris"], ["PARIS"]) == [1.0]
    assert score({"name": "exact_match", "strip": False}, [" Paris"], ["Paris"]) == [0.0]


def test_exact_match_partial_credit_ranks_a_near_miss_between_a_hit_and_a_far_miss():
    hit, near, far = score({"name": "exact_match", "partial_credit": True}, ["blue red cat", "blue red cap", "xyz"], ["blue red cat"] * 3)
    assert hit == 1.0
    assert 0.0 <= far < near < 0.5 < hit
    assert near == pytest.approx(0.5 * 11 / 12)  # difflib ratio of two 12-character strings one letter apart


def test_exact_match_without_a_reference_is_a_data_error_naming_the_reward_and_the_columns():
    with pytest.raises(DataError, match=r"reward 'exact_match'.* row 1 has none.*`completion`.*`reference`"):
        score("exact_match", ["a", "b"], ["a", None])


def test_a_batch_of_mismatched_lengths_is_a_data_error():
    (reward,) = build_rewards([{"name": "length", "max_chars": 3}])
    with pytest.raises(DataError, match="2 completions, 1 prompts"):
        reward.score(["a", "b"], prompts=["p"], references=[None, None])


# -- regex ---------------------------------------------------------------------------------------------
def test_regex_matches_whole_or_anywhere():
    digits = {"name": "regex", "pattern": r"[0-9]+"}
    assert score(digits, ["42", " 42\n", "answer: 42", "none"]) == [1.0, 1.0, 0.0, 0.0]
    assert score({**digits, "full_match": False}, ["answer: 42", "none"]) == [1.0, 0.0]
    assert score({**digits, "strip": False}, [" 42"]) == [0.0]
    # no reference is needed: rows without one score
    assert score({"name": "regex", "pattern": "<answer>.*</answer>"}, ["<answer>7</answer>"], [None]) == [1.0]


def test_an_invalid_pattern_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match=r"objective\.rewards\[1\]\.pattern: invalid regular expression '\(ab'"):
        build_rewards(["exact_match", {"name": "regex", "pattern": "(ab"}], location="objective.rewards")


# -- length --------------------------------------------------------------------------------------------
def test_length_is_zero_within_the_limit_and_grows_to_minus_weight():
    spec = {"name": "length", "max_chars": 10, "weight": 2.0}
    assert score(spec, ["", "x" * 10, "x" * 15, "x" * 20, "x" * 100]) == [0.0, 0.0, -1.0, -2.0, -2.0]
    assert score({"name": "length", "max_chars": 4}, ["abcde"]) == [-0.25]


# -- build_rewards -------------------------------------------------------------------------------------
def test_build_rewards_reports_every_problem_with_its_location():
    with pytest.raises(UnknownPartError) as info:
        build_rewards(
            ["exact_mach", {"name": "length"}, {"name": "length", "max_chars": 0}, {"name": "regex", "pattern": "a", "foo": 1}, {"pattern": "a"}],
            location="objective.rewards",
        )
    where = {p.location: p.message for p in info.value.problems}
    assert "Did you mean 'exact_match'?" in where["objective.rewards[0]"]
    assert "'length', 'model', 'regex'" in where["objective.rewards[0]"]  # the installed ones are listed
    assert "objective.rewards[1].max_chars" in where
    assert where["objective.rewards[2].max_chars"].startswith("must be >= 1")
    assert "unknown option 'foo'" in where["objective.rewards[3].foo"]
    assert "needs a 'name' key" in where["objective.rewards[4]"]


def test_build_rewards_takes_a_name_a_mapping_or_a_list_and_refuses_none():
    assert [r.name for r in build_rewards("exact_match")] == ["exact_match"]
    assert [r.options.max_chars for r in build_rewards([{"name": "length", "max_chars": 5}, {"name": "length", "max_chars": 9}])] == [5, 9]
    assert isinstance(build_rewards({"name": "regex", "pattern": "x"})[0], Reward)
    with pytest.raises(ConfigError, match="rewards: ask for at least one reward"):
        build_rewards([])


# -- model ---------------------------------------------------------------------------------------------
def _tiny_reward_model(path: Path, *, num_labels: int, prefer: str, over: str) -> Path:
    """A tiny GPT-2 sequence classifier whose head scores ``prefer`` above ``over`` (set by hand)."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from tunekit.testing import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer("gpt2")
    tokenizer.pad_token = tokenizer.eos_token
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=1, n_head=2, num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(config).eval()
    with torch.no_grad():
        last = [model.transformer(**tokenizer(t, return_tensors="pt")).last_hidden_state[0, -1] for t in (prefer, over)]
        direction = last[0] - last[1]  # score(prefer) - score(over) = |direction|^2 > 0
        model.score.weight.zero_()
        model.score.weight[-1] = direction
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("num_labels", [1, 2])
def test_model_reward_prefers_the_row_its_head_prefers(tmp_path, num_labels):
    good_prompt, good, bad = "Reverse: cat dog bird\nAnswer:", " bird dog cat", " fish tree river"
    path = _tiny_reward_model(tmp_path / "rm", num_labels=num_labels, prefer=good_prompt + good, over=good_prompt + bad)
    scores = score({"name": "model", "path": str(path), "batch_size": 2}, [good, bad, good], prompts=[good_prompt] * 3)
    assert all(isinstance(s, float) and math.isfinite(s) for s in scores)
    assert scores[0] > scores[1]
    assert scores[0] == pytest.approx(scores[2], abs=1e-5)  # batches of 2 then 1: padding changes nothing
    assert check_reward({"name": "model", "path": str(path)}) == pytest.approx(
        check_reward({"name": "model", "path": str(path), "batch_size": 1}), abs=1e-4
    )


def test_model_reward_refuses_what_is_not_a_sequence_classifier_directory(tmp_path):
    def error(path) -> str:
        with pytest.raises(ModelLoadError) as info:
            build_rewards([{"name": "model", "path": str(path)}], location="objective.rewards")
        assert isinstance(info.value, TunekitError)
        return str(info.value)

    assert "is not a directory" in error(tmp_path / "missing") and "reward-model" in error(tmp_path / "missing")
    (tmp_path / "file.bin").write_text("x")
    assert "is not a directory" in error(tmp_path / "file.bin")
    (tmp_path / "empty").mkdir()
    assert "no config.json" in error(tmp_path / "empty")
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    assert "not a sequence classifier" in error(lm)
    adapter = tmp_path / "run" / "model"
    adapter.mkdir(parents=True)
    (adapter / "tunekit.json").write_text(json.dumps({"format": "adapter", "strategy": "lora"}))
    for path in (adapter, tmp_path / "run"):  # a save, or the run directory holding it: loaded onto its base on first use
        (reward,) = build_rewards([{"name": "model", "path": str(path)}])
        with pytest.raises(ModelLoadError, match="could not load"):  # this one has no config to rebuild its base from
            reward.score(["x"], prompts=["p"], references=[None])


def test_model_reward_loads_a_full_tunekit_save_and_reports_a_broken_directory(tmp_path):
    path = _tiny_reward_model(tmp_path / "rm", num_labels=1, prefer="a b", over="c d")
    (path / "tunekit.json").write_text(json.dumps({"format": "full", "strategy": "full"}))
    assert len(score({"name": "model", "path": str(path)}, ["x", "y"])) == 2
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"architectures": ["GPT2ForSequenceClassification"], "model_type": "gpt2"}))
    (reward,) = build_rewards([{"name": "model", "path": str(broken)}])
    with pytest.raises(ModelLoadError, match="could not load"):
        reward.score(["x"], prompts=["p"], references=[None])


# -- the contract check --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec", ["exact_match", {"name": "exact_match", "partial_credit": True}, {"name": "regex", "pattern": "[a-z ]+"}, {"name": "length", "max_chars": 20}],
    ids=lambda s: s if isinstance(s, str) else s["name"] + "+",
)
def test_the_contract_check_passes_for_the_builtins(spec):
    scores = check_reward(spec)
    assert len(scores) == 6 and all(isinstance(s, float) for s in scores)


class _Broken:
    name = "broken"
    description = "Returns what it should not."
    Options = NoOptions
    result: object = None

    def __init__(self, options):
        self.options = options

    def score(self, completions, *, prompts, references):
        return type(self).result(completions) if callable(type(self).result) else type(self).result


@pytest.mark.parametrize(
    "result, message",
    [
        (lambda c: [1.0] * (len(c) - 1) if len(c) > 1 else [1.0, 1.0], "values for"),
        (lambda c: [float("nan")] * len(c), "finite floats"),
        (lambda c: [1] * len(c), "finite floats"),
        (lambda c: tuple(1.0 for _ in c), "a list of floats"),
        (lambda c: [float(len(c))] * len(c), "alone but"),
    ],
    ids=["wrong-length", "nan", "int", "tuple", "batch-dependent"],
)
def test_the_contract_check_fails_for_a_broken_reward(result, message):
    broken = type("Broken", (_Broken,), {"result": staticmethod(result)})

    class Plugin:
        @hookimpl
        def register_rewards(self, register):
            register(broken)

    register_plugin(Plugin(), name="broken-reward")
    with pytest.raises(ContractViolation, match=message):
        check_reward("broken")
