"""Preference and RL objectives on trl's trainers: ``dpo`` (and its loss variants) and ``grpo``, their rows,
their reference models, their figures, resume, and a reward plugin installed from a package."""

from __future__ import annotations

import json
import math

import pytest
from tests.conftest import quick
from tests.plugin_packages import shout_reward_plugin  # noqa: F401  (a fixture)

from tunekit import ConfigError, DataError, Tuner, hookimpl
from tunekit.data.rows import normalise_rows
from tunekit.parts import NoOptions
from tunekit.plugins import register_plugin
from tunekit.testing import pair_rows, sft_rows


def _dpo(model, out, strategy="lora", **objective):
    return Tuner(model=str(model), strategy=strategy, objective={"name": "dpo", **objective}, output_dir=str(out),
                 training=quick(max_steps=8, learning_rate=2e-2 if strategy == "lora" else 5e-3))


# -- rows -------------------------------------------------------------------------------------------
def test_preference_rows_in_every_shape_become_prompt_chosen_rejected():
    from datasets import Dataset

    text = Dataset.from_list([{"prompt": "Q", "chosen": "good", "rejected": "bad"}])
    assert normalise_rows(text) == ("preference", text) or normalise_rows(text)[1][0] == {"prompt": "Q", "chosen": "good", "rejected": "bad"}
    history = [{"role": "user", "content": "hi"}]
    messages = Dataset.from_list([{"prompt": history, "chosen": [{"role": "assistant", "content": "hello"}],
                                   "rejected": [{"role": "assistant", "content": "go away"}]}])
    fmt, rows = normalise_rows(messages)
    assert fmt == "preference" and rows[0] == {"prompt": history, "chosen": "hello", "rejected": "go away"}
    implicit = Dataset.from_list([{"chosen": [*history, {"role": "assistant", "content": "hello"}],
                                   "rejected": [*history, {"role": "assistant", "content": "go away"}]}])
    fmt, rows = normalise_rows(implicit)
    assert fmt == "preference" and rows[0] == {"prompt": history, "chosen": "hello", "rejected": "go away"}


@pytest.mark.parametrize("row, message", [
    ({"chosen": "good", "rejected": "bad"}, "has no prompt"),
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
      "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "c"}]}, "same history"),
    ({"prompt": "Q", "chosen": {"role": "user", "content": "x"}, "rejected": "bad"}, "one {'role': 'assistant'"),
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, "column 'prompt' must be a string"),
])
def test_malformed_pairs_are_data_errors_naming_the_row(row, message):
    from datasets import Dataset

    with pytest.raises(DataError, match=message):
        normalise_rows(Dataset.from_list([row]))


@pytest.mark.parametrize("bad, code", [
    ({"prompt": "Q", "chosen": " same", "rejected": " same"}, "identical-pair"),
    ({"prompt": "Q", "chosen": " ", "rejected": " no"}, "empty-answer-in-pair"),
    ({"prompt": "", "chosen": " yes", "rejected": " no"}, "empty-prompt-in-pair"),
])
def test_pairs_that_teach_nothing_are_preflight_errors(tiny_gpt2, tmp_path, bad, code):
    from tunekit.preflight import PreflightError

    rows = pair_rows(8) + [bad]
    with pytest.raises(PreflightError, match=code):
        _dpo(tiny_gpt2, tmp_path / "run").fit(rows)
    assert code in {f.code for f in Tuner(model=str(tiny_gpt2), objective="dpo").preflight(rows, estimate=False).findings}


# -- dpo ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["lora", "full"])
def test_dpo_lowers_its_loss_and_prefers_the_chosen_answers(tiny_llama, tmp_path, strategy):
    rows = pair_rows(32)
    tuner = _dpo(tiny_llama, tmp_path / "run", strategy)
    result = tuner.fit(rows, eval=pair_rows(16, seed=1), metrics=["loss", "preference_accuracy"], baseline=True)
    losses = [p.loss for p in result.loss_history]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-3)  # step 1: the policy is its reference
    assert losses[-1] < losses[0] - 0.05
    assert result.eval_metrics["preference_accuracy"] > result.base_eval_metrics["preference_accuracy"]
    assert result.train_figures["rewards/margins"] > 0 and "rewards/accuracies" in result.train_figures
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["loss_history"][-1]["figures"]["rewards/margins"] == pytest.approx(result.train_figures["rewards/margins"])
    assert "train rewards/margins (last logged)" in (tmp_path / "run" / "README.md").read_text()
    from matplotlib.image import imread

    assert imread(tmp_path / "run" / "loss.png").shape[1] > 1200  # the reward curves beside the loss


@pytest.mark.parametrize("loss_type", ["ipo", "hinge", ["sigmoid", "sft"]])
def test_dpo_loss_variants_train(tiny_gpt2, tmp_path, loss_type):
    result = _dpo(tiny_gpt2, tmp_path / "run", loss_type=loss_type, beta=0.5).fit(pair_rows(16))
    assert result.loss_history[-1].loss < result.loss_history[0].loss


def test_an_unknown_dpo_loss_is_a_config_error_naming_trls_losses(tiny_gpt2):
    with pytest.raises(ConfigError, match="unknown DPO loss.*sigmoid"):
        Tuner(model=str(tiny_gpt2), objective={"name": "dpo", "loss_type": "sigmoidd"}).evaluate(pair_rows(2))


def test_with_lora_the_reference_is_the_base_with_the_adapter_disabled(tiny_llama, tmp_path):
    """No copy of the adapter or of the model: trl's reference log-probs equal the untouched base model's."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig

    from tunekit.builtin.preference import dpo_trainer_class

    tuner = _dpo(tiny_llama, tmp_path / "run")
    data = tuner._prepare(pair_rows(8), training=True)
    trainer = dpo_trainer_class()(
        model=tuner.model, args=DPOConfig(output_dir=str(tmp_path / "t"), use_cpu=True, bf16=False, report_to="none", max_length=None),
        train_dataset=data.train, processing_class=tuner.tokenizer,
    )
    assert trainer.ref_model is None and list(tuner.model.peft_config) == ["default"]
    torch.nn.init.normal_(next(p for n, p in tuner.model.named_parameters() if "lora_B" in n))  # the policy moves
    batch = trainer.data_collator([data.train[i] for i in range(4)])
    ref_chosen, _ = trainer.compute_ref_log_probs(trainer.model, batch)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)[:, 1:]
    with torch.no_grad():
        logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    per_token = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (labels != -100)
    assert torch.allclose(ref_chosen, per_token.sum(1).chunk(2)[0], atol=1e-4)


def test_a_continued_adapter_is_its_own_reference_and_the_copy_is_not_saved(tiny_gpt2, tmp_path):
    """SFT then DPO: the SFT adapter (not the bare base) is the reference; the save holds one adapter."""
    Tuner(model=str(tiny_gpt2), strategy="lora", output_dir=str(tmp_path / "sft"), training=quick(max_steps=4, learning_rate=1e-2)).fit(sft_rows(16))
    dpo = Tuner.load(tmp_path / "sft", objective="dpo", output_dir=str(tmp_path / "dpo"), training=quick(max_steps=3))
    result = dpo.fit(pair_rows(16))
    assert result.loss_history[0].loss == pytest.approx(math.log(2), abs=1e-3)  # the start model is the reference
    assert list(dpo.model.peft_config) == ["default"]
    assert not (tmp_path / "dpo" / "model" / "ref").exists()


def test_dpo_with_full_fine_tuning_keeps_a_frozen_copy_as_reference(tiny_gpt2):
    from tunekit.builtin.trl_reference import frozen_copy

    tuner = Tuner(model=str(tiny_gpt2), strategy="full")
    ref = frozen_copy(tuner.model)
    assert ref is not tuner.model and not any(p.requires_grad for p in ref.parameters())
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(ref.parameters(), tuner.model.parameters(), strict=True))


def test_dpo_resumes_mid_run_as_if_never_stopped(tiny_gpt2, tmp_path):
    def run(out, crash_at=None):
        class Crash:
            @hookimpl
            def on_log(self, tuner, step, logs):
                if step == crash_at and "loss" in logs:
                    raise KeyboardInterrupt("crash")
        if crash_at:
            register_plugin(Crash(), name=f"crash-{out.name}")
        return Tuner(model=str(tiny_gpt2), objective="dpo", output_dir=str(out), training=quick(max_steps=6, save_steps=2, keep_checkpoints=None))

    reference = run(tmp_path / "straight").fit(pair_rows(32))
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", crash_at=3).fit(pair_rows(32))
    from tunekit.plugins import reset_plugins

    reset_plugins()
    resumed = run(tmp_path / "cut").fit(pair_rows(32), resume=True)
    assert resumed.loss_history[0].step == 3  # from checkpoint-2
    assert resumed.loss_history[-1].loss == pytest.approx(reference.loss_history[-1].loss, rel=1e-4)


def test_preference_accuracy_needs_pairs(tiny_gpt2):
    with pytest.raises(DataError, match="preference_accuracy.*'chosen' and 'rejected'"):
        Tuner(model=str(tiny_gpt2)).evaluate(sft_rows(4), metrics=["preference_accuracy"])


def test_sft_trains_on_the_chosen_answer_of_pairs(tiny_gpt2, tmp_path):
    tuner = Tuner(model=str(tiny_gpt2), objective="sft", output_dir=str(tmp_path / "run"), training=quick(max_steps=2))
    data = tuner._prepare(pair_rows(2), training=True)
    trained = [t for t in data.train[0]["labels"] if t != -100]
    assert tuner.tokenizer.decode(trained).startswith(pair_rows(2)[0]["chosen"])
    assert tuner.evaluate(pair_rows(4), metrics=["preference_accuracy"]).metrics["preference_accuracy"] >= 0


# -- grpo ----------------------------------------------------------------------------------------------
class Letters:
    """A toy reward: the share of the letter 'e' in the answer."""

    name = "letter-e"
    description = "share of 'e'"
    Options = NoOptions

    def __init__(self, options):
        pass

    def score(self, completions, *, prompts, references):
        return [sum(ch == "e" for ch in c) / max(1, len(c)) for c in completions]


class LettersPlugin:
    @hookimpl
    def register_rewards(self, register):
        register(Letters)


def _grpo(model, out, strategy="full", **objective):
    options = {"name": "grpo", "rewards": ["letter-e"], "num_generations": 4, "max_completion_length": 8, **objective}
    return Tuner(model=str(model), strategy=strategy, objective=options, output_dir=str(out),
                 training=quick(max_steps=30, learning_rate=2e-2))


def test_grpo_raises_its_reward(tiny_llama, tmp_path):
    register_plugin(LettersPlugin(), name="letters")
    result = _grpo(tiny_llama, tmp_path / "run", beta=0.0).fit([{"prompt": f"Q{i}: say"} for i in range(16)])
    rewards = [p.figures["reward"] for p in result.loss_history]
    assert len(rewards) == 30 and "rewards/letter-e/mean" in result.train_figures
    assert sum(rewards[-8:]) / 8 > sum(rewards[:8]) / 8 + 0.1


def test_grpo_with_lora_logs_kl_against_the_adapter_disabled_base(tiny_llama, tmp_path):
    register_plugin(LettersPlugin(), name="letters")
    tuner = _grpo(tiny_llama, tmp_path / "run", strategy="lora", beta=0.1)
    tuner.config.training.max_steps = 3
    result = tuner.fit(sft_rows(8))
    assert result.loss_history[0].figures["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as its reference
    assert "kl" in result.train_figures and list(tuner.model.peft_config) == ["default"]
    assert result.eval_loss is None or math.isfinite(result.eval_loss)


def test_grpo_batches_must_be_whole_groups(tiny_gpt2, tmp_path):
    register_plugin(LettersPlugin(), name="letters")
    tuner = _grpo(tiny_gpt2, tmp_path / "run", num_generations=3)
    with pytest.raises(ConfigError, match="num_generations"):
        tuner.fit(sft_rows(8))


def test_grpo_rewards_are_checked_before_anything_loads(tiny_gpt2):
    with pytest.raises(ConfigError, match="objective.rewards"):
        Tuner(model=str(tiny_gpt2), objective={"name": "grpo", "rewards": ["no-such-reward"]}).evaluate(sft_rows(2))
    with pytest.raises(ConfigError, match="reward_weights"):
        Tuner(model=str(tiny_gpt2), objective={"name": "grpo", "rewards": ["exact_match"], "reward_weights": [1, 2]}).evaluate(sft_rows(2))


def test_grpo_uses_a_reward_installed_from_a_package(tiny_gpt2, tmp_path, shout_reward_plugin):  # noqa: F811
    tuner = Tuner(model=str(tiny_gpt2), strategy="lora", output_dir=str(tmp_path / "run"),
                  objective={"name": "grpo", "rewards": ["shout", "exact_match"], "num_generations": 4, "max_completion_length": 4},
                  training=quick(max_steps=2))
    result = tuner.fit(sft_rows(8))
    assert "rewards/shout/mean" in result.train_figures and "rewards/exact_match/mean" in result.train_figures


def test_grpo_resumes_mid_run(tiny_gpt2, tmp_path):
    register_plugin(LettersPlugin(), name="letters")

    def tuner():
        return Tuner(model=str(tiny_gpt2), objective={"name": "grpo", "rewards": ["letter-e"], "num_generations": 4, "max_completion_length": 4},
                     output_dir=str(tmp_path / "run"), training=quick(max_steps=4, save_steps=2, keep_checkpoints=None))

    class Crash:
        fired = False

        @hookimpl
        def on_log(self, tuner, step, logs):
            if step == 3 and "loss" in logs and not self.fired:
                self.fired = True
                raise KeyboardInterrupt("crash")

    register_plugin(Crash(), name="crash")
    with pytest.raises(KeyboardInterrupt):
        tuner().fit(sft_rows(8))
    resumed = tuner().fit(sft_rows(8), resume=True)
    assert [p.step for p in resumed.loss_history] == [3, 4] and resumed.steps == 4


# -- reward-model ----------------------------------------------------------------------------------
def colour_pairs(n: int, tag: str = "Q") -> list[dict]:
    return [{"prompt": f"{tag}{i}: colour?", "chosen": " blue sky", "rejected": " red wine"} for i in range(n)]


@pytest.mark.parametrize("strategy", ["lora", "full"])
def test_a_reward_model_learns_the_preference_and_the_model_reward_loads_its_run(tiny_llama, tmp_path, strategy):
    from tunekit.config import build_rewards

    tuner = Tuner(model=str(tiny_llama), strategy=strategy, objective="reward-model", output_dir=str(tmp_path / "rm"),
                  training=quick(max_steps=12, learning_rate=1e-2 if strategy == "lora" else 1e-3))
    result = tuner.fit(colour_pairs(32), eval=colour_pairs(8, "R"), metrics=["loss", "preference_accuracy"], baseline=True)
    assert result.eval_metrics["preference_accuracy"] == 1.0 and result.eval_loss < result.base_eval_metrics["loss"]
    assert "accuracy" in result.train_figures and "margin" in result.train_figures
    (reward,) = build_rewards([{"name": "model", "path": str(tmp_path / "rm")}])
    rows = colour_pairs(4, "S")
    scores = reward.score([r["chosen"] for r in rows] + [r["rejected"] for r in rows], prompts=[r["prompt"] for r in rows] * 2,
                          references=[None] * 8)
    assert min(scores[:4]) > max(scores[4:])  # the reward model's preference, read back through the model reward


# -- kto -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["lora", "full"])
def test_kto_learns_from_pairs_unpaired_into_good_and_bad_answers(tiny_llama, tmp_path, strategy):
    tuner = Tuner(model=str(tiny_llama), strategy=strategy, objective="kto", output_dir=str(tmp_path / "run"),
                  training=quick(max_steps=8, learning_rate=2e-2 if strategy == "lora" else 5e-3))
    result = tuner.fit(colour_pairs(32), eval=colour_pairs(8, "R"), metrics=["loss", "preference_accuracy"], baseline=True)
    assert result.loss_history[0].loss == pytest.approx(0.5, abs=1e-3)  # sigmoid(0): the policy is its reference
    assert result.loss_history[-1].loss < 0.45
    assert result.eval_metrics["preference_accuracy"] > result.base_eval_metrics["preference_accuracy"]
    assert result.train_figures["rewards/margins"] > 0


def test_kto_takes_judged_answers_and_refuses_labels_that_are_not_booleans(tiny_gpt2, tmp_path):
    judged = [{"prompt": f"Q{i}: colour?", "completion": " blue sky" if i % 2 else " red wine", "label": bool(i % 2)} for i in range(16)]
    tuner = Tuner(model=str(tiny_gpt2), output_dir=str(tmp_path / "run"), training=quick(max_steps=2))
    assert tuner.fit(judged).objective == "kto"  # chosen by the rows' format
    # a label that is not true/false judges nothing: the rows are prompt/completion rows, which kto refuses
    with pytest.raises(ConfigError, match="true/false 'label'"):
        Tuner(model=str(tiny_gpt2), objective="kto").evaluate([{**judged[0], "label": "good"}])
    assert Tuner(model=str(tiny_gpt2)).evaluate([{**judged[0], "label": "good"}]).rows == 1  # sft on prompt/completion


# -- quantized bases ----------------------------------------------------------------------------------
@pytest.mark.parametrize("quantizer", ["bnb-8bit", "bnb-4bit"])
def test_qlora_dpo_trains_and_reloads(quantizer, tiny_llama, tmp_path):
    tuner = Tuner(model=str(tiny_llama), strategy="lora", quantizer=quantizer, objective="dpo", output_dir=str(tmp_path / "run"),
                  training=quick(max_steps=6, learning_rate=2e-2))
    result = tuner.fit(colour_pairs(24), eval=colour_pairs(8, "R"), metrics=["preference_accuracy"])
    assert result.loss_history[-1].loss < result.loss_history[0].loss
    again = Tuner.load(tmp_path / "run")
    assert again.config.quantizer.name == quantizer
    assert again.evaluate(colour_pairs(8, "R"), metrics=["preference_accuracy"]).metrics["preference_accuracy"] == pytest.approx(
        result.eval_metrics["preference_accuracy"])


def test_full_fine_tuning_on_a_quantized_base_is_refused_for_dpo_too(tiny_gpt2, tmp_path):
    with pytest.raises(ConfigError, match="bnb-4bit"):
        Tuner(model=str(tiny_gpt2), strategy="full", quantizer="bnb-4bit", objective="dpo", output_dir=str(tmp_path / "r")).fit(colour_pairs(8))


def test_compare_puts_sft_dpo_and_grpo_side_by_side_on_one_set_of_pairs(tiny_gpt2, tmp_path):
    from tunekit import compare

    grpo = {"name": "grpo", "num_generations": 4, "max_completion_length": 4, "rewards": [{"name": "exact_match", "partial_credit": True}]}
    report = compare(str(tiny_gpt2), [{"name": "sft", "objective": "sft"}, {"name": "dpo", "objective": "dpo"},
                                      {"name": "grpo", "objective": grpo}],
                     colour_pairs(16), colour_pairs(8, "R"), budget={"max_steps": 2}, metrics=["exact_match", "preference_accuracy"],
                     output_dir=tmp_path / "compare", progress=False, strategy="lora", training={"batch_size": 8})
    rows = {row["candidate"]: row for row in report.table}
    assert [rows[n]["status"] for n in ("sft", "dpo", "grpo")] == ["ok", "ok", "ok"], report.to_markdown()
    assert all(0 <= rows[n]["preference_accuracy"] <= 1 for n in rows)
    assert rows["grpo"]["steps"] == rows["dpo"]["steps"] == 2


@pytest.mark.parametrize("objective, rows, says", [
    ("dpo", sft_rows(4), "'prompt', 'chosen' and 'rejected'"),
    ("reward-model", sft_rows(4), "'prompt', 'chosen' and 'rejected'"),
    ("kto", [{"text": "raw"}], "true/false 'label'"),
    ({"name": "grpo", "rewards": ["exact_match"]}, [{"text": "raw"}], "rows with a 'prompt'"),
])
def test_rows_an_objective_cannot_train_on_are_refused_saying_what_it_needs(tiny_gpt2, objective, rows, says):
    with pytest.raises(ConfigError, match=says):
        Tuner(model=str(tiny_gpt2), objective=objective).evaluate(rows)


def test_pairs_come_from_files_and_datasets_like_every_row(tiny_gpt2, tiny_llama, tmp_path):
    from datasets import Dataset

    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in colour_pairs(8)))
    from_file = Tuner(model=str(tiny_gpt2), output_dir=str(tmp_path / "a"), training=quick(max_steps=1)).fit(str(path))
    assert from_file.objective == "dpo"  # chosen by the rows' format
    chats = [{"prompt": [{"role": "user", "content": p["prompt"]}], "chosen": [{"role": "assistant", "content": p["chosen"]}],
              "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in colour_pairs(8)]
    from_dataset = Tuner(model=str(tiny_llama), objective="dpo", output_dir=str(tmp_path / "b"), training=quick(max_steps=1))
    assert from_dataset.fit(Dataset.from_list(chats)).steps == 1


def test_a_reward_that_returns_the_wrong_number_of_scores_is_named(tiny_gpt2, tmp_path):
    class Short:
        name, description, Options = "short", "one score for any batch", NoOptions

        def __init__(self, options):
            pass

        def score(self, completions, *, prompts, references):
            return [1.0]

    class ShortPlugin:
        @hookimpl
        def register_rewards(self, register):
            register(Short)

    register_plugin(ShortPlugin(), name="short")
    from tunekit import TunekitError

    tuner = Tuner(model=str(tiny_gpt2), objective={"name": "grpo", "rewards": ["short"], "num_generations": 4, "max_completion_length": 4},
                  output_dir=str(tmp_path / "run"), training=quick(max_steps=1))
    with pytest.raises(TunekitError, match="reward 'short' returned 1 scores for 8 completions"):
        tuner.fit(sft_rows(8))
