"""``grpo``: online reinforcement learning with trl's ``GRPOTrainer``: generate, score with rewards, update.

Every step the model answers each prompt ``num_generations`` times; the rewards (parts of the ``reward``
kind: ``exact_match`` against the row's reference, ``regex``, ``length``, ``model``, or a plugin's) score
the answers, and each answer is pushed up or down by how it scored against its group. With LoRA the
KL reference is the base with the adapter disabled.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from tunekit.builtin.objectives import PairTokenizer, SFTObjective, SFTOptions
from tunekit.builtin.trl_reference import AdapterReference
from tunekit.data.chat import adds_special_tokens, eos_id, render_generation_prompt, special_ids
from tunekit.data.collate import IGNORE_INDEX
from tunekit.errors import ConfigError, DataError, Problem, TunekitError
from tunekit.hookspecs import Register, hookimpl
from tunekit.parts import PartOptions, TrainerPlan

if TYPE_CHECKING:
    import torch
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


class GRPOOptions(PartOptions):
    rewards: list[str | dict[str, Any]] = Field(min_length=1, description=(
        "The rewards that score each answer, summed (with reward_weights): names or mappings with options, e.g. "
        "['exact_match', {name: regex, pattern: '^\\\\d{4}$'}]. See `tunekit plugins` for the installed ones."))
    reward_weights: list[float] | None = Field(default=None, description="One weight per reward (default: 1 each).")
    num_generations: int = Field(default=4, ge=2, description=(
        "Answers sampled per prompt; each is scored against its group's mean. training.batch_size counts answers, "
        "so it must be a multiple of this."))
    max_completion_length: int = Field(default=32, ge=1, description="New tokens per sampled answer at most.")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of the answers.")
    beta: float = Field(default=0.04, ge=0, description=(
        "Weight of the KL penalty against the reference model (the adapter-disabled base with LoRA); 0 drops it "
        "(and the reference forward pass)."))
    loss_type: str = Field(default="dapo", description="trl's GRPO loss aggregation: dapo, grpo, dr_grpo, bnpo, cispo, sapo...")
    scale_rewards: str = Field(default="group", description=(
        "How advantages are scaled: 'group' (by the group's reward std, GRPO), 'batch', or 'none' (Dr. GRPO)."))


class _RewardFunction:
    """A tunekit reward as trl calls a reward function: ``f(prompts, completions, **row columns) -> list[float]``."""

    def __init__(self, reward: Any):
        self.reward = reward
        self.__name__ = reward.name  # trl logs rewards/<name>/mean

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        texts = [c if isinstance(c, str) else "".join(m.get("content", "") for m in c) for c in completions]
        prompt_texts = [p if isinstance(p, str) else str(p) for p in prompts]
        references = [r if isinstance(r, str) and r else None for r in columns.get("reference", [None] * len(texts))]
        scores = list(self.reward.score(texts, prompts=prompt_texts, references=references))
        if len(scores) != len(texts):  # a plugin's bug: say whose, before trl's shape error deep in a step
            raise TunekitError(
                f"reward {self.__name__!r} returned {len(scores)} scores for {len(texts)} completions; a reward's "
                "score() must return one float per completion (tunekit.testing.contracts.check_reward checks it)."
            )
        return [float(x) for x in scores]


def grpo_trainer_class() -> type[Any]:
    """trl's ``GRPOTrainer``, tokenizing the prompts tunekit rendered as tunekit tokenizes them."""
    from trl import GRPOTrainer

    class _GRPOTrainer(AdapterReference, GRPOTrainer):  # type: ignore[misc]
        def _tokenize_prompts(self, prompts: list[Any]) -> Any:
            if prompts and all(isinstance(p, str) for p in prompts):
                # trl tokenizes text prompts with special tokens on, which gives a second BOS after a chat template
                # that writes one; tunekit renders the chat template itself and asks adds_special_tokens, as sft does.
                tokenizer: Any = self.processing_class
                return [list(tokenizer(p, add_special_tokens=adds_special_tokens(tokenizer, p))["input_ids"]) for p in prompts], None, {}
            return super()._tokenize_prompts(prompts)

    return _GRPOTrainer


GRPO_LOGGED = ("reward", "reward_std", "kl", "entropy", "completions/mean_length", "frac_reward_zero_std")


def prompt_and_reference(row: dict[str, Any]) -> tuple[Any, str | None]:
    """The prompt to answer and the reference answer (or None) of a grpo row."""
    if "messages" in row:
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        last = max((j for j, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            return messages, None
        return messages[:last], messages[last]["content"]
    if "completion" in row:
        return row["prompt"], row["completion"]
    if "chosen" in row:
        return row["prompt"], row["chosen"]
    return row["prompt"], row.get("reference")


class GRPOObjective:
    """Group relative policy optimisation (trl's ``GRPOTrainer``): the model learns from its own scored answers.

    Takes prompts with an optional reference answer: prompt/completion rows (the completion is the
    reference), chat rows (the last assistant turn is), preference pairs (the chosen answer is) or
    ``{"prompt", "reference"}`` rows. ``training.max_steps`` counts updates of ``training.batch_size``
    answers (``batch_size / num_generations`` prompts each). The eval loss is the cross-entropy of the
    reference answers; measure the answers themselves with ``metrics=["exact_match"]``.
    """

    name: ClassVar[str] = "grpo"
    rows_help: ClassVar[str] = ("It answers prompts: rows with a 'prompt' (and optionally a 'reference'), prompt/completion, "
                                "chat or preference rows.")
    description: ClassVar[str] = "Online RL: sample answers, score them with rewards, push up the better ones (trl's GRPO)."
    Options: ClassVar[type[GRPOOptions]] = GRPOOptions

    def __init__(self, options: GRPOOptions):
        from tunekit.config import build_rewards

        self.options = options
        self.rewards = build_rewards(options.rewards, location="objective.rewards")
        if options.reward_weights is not None and len(options.reward_weights) != len(self.rewards):
            raise ConfigError([Problem("objective.reward_weights", (
                f"gives {len(options.reward_weights)} weights for {len(self.rewards)} rewards; give one weight per reward"))])

    def accepts(self, row_format: str) -> bool:
        return row_format in {"prompt", "prompt_completion", "chat", "preference"}

    def tokenize(self, rows: Dataset, tokenizer: PreTrainedTokenizerBase, *, max_length: int) -> Dataset:
        sft = SFTObjective(SFTOptions())
        eos, specials = eos_id(tokenizer), special_ids(tokenizer)
        pairs = PairTokenizer(tokenizer) if "chosen" in rows.column_names else None
        room = max_length - self.options.max_completion_length
        if room < 1:
            raise ConfigError([Problem("objective.max_completion_length", (
                f"{self.options.max_completion_length} new tokens leave no room for a prompt within training.max_length="
                f"{max_length}; lower it or raise training.max_length"))])

        def one(row: dict[str, Any], index: int) -> dict[str, Any]:
            prompt, reference = prompt_and_reference(row)
            text, add_special = render_generation_prompt(tokenizer, prompt)
            prompt_ids = list(tokenizer(text, add_special_tokens=add_special)["input_ids"])
            pair = pairs.pair(row, max_length) if pairs is not None else None
            if pair is not None:  # preference rows: the chosen answer is the reference, tokenized once with the pair
                ids = pair["prompt_ids"] + pair["chosen_ids"]
                labels = [IGNORE_INDEX] * len(pair["prompt_ids"]) + pair["chosen_ids"]
            elif reference:  # the reference answer tokenized as sft trains it: the eval loss
                if isinstance(prompt, str):
                    ids, labels = sft._prompt_completion(prompt, reference, tokenizer, eos)
                else:
                    ids, labels = sft._chat([*prompt, {"role": "assistant", "content": reference}], tokenizer, eos, specials)
            else:
                ids, labels = prompt_ids, [IGNORE_INDEX] * len(prompt_ids)
            out = {"prompt": text, "reference": reference or "", "input_ids": ids[:max_length], "labels": labels[:max_length],
                   "length": len(prompt_ids), "row": index}
            if pair is not None:  # preference rows keep both answers, so evaluation can score the pair
                out.update({k: pair[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")})
            return out

        out = rows.map(one, with_indices=True, remove_columns=rows.column_names, desc="tokenizing (grpo)")
        too_long = [i for i, n in enumerate(out["length"]) if n > room]
        if too_long:
            if len(too_long) == len(out):
                raise DataError(
                    f"every prompt is longer than training.max_length - objective.max_completion_length = {room} tokens; "
                    "raise training.max_length or shorten the prompts."
                )
            log.warning("grpo: dropping %d prompts longer than %d tokens (first: row %d).", len(too_long), room, too_long[0])
            drop = set(too_long)
            out = out.select([i for i in range(len(out)) if i not in drop])
        return out

    def trainer(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> TrainerPlan:
        from trl import GRPOConfig

        o = self.options
        if o.beta > 0 and not hasattr(model, "peft_config"):
            source = str(getattr(model.config, "_name_or_path", ""))
            if not (Path(source) / "config.json").is_file():
                raise ConfigError([Problem("objective.beta", (
                    f"a full or head fine-tune with a KL penalty needs a reference model, which trl reloads from the base's "
                    f"path ({source!r}), and that is not a model directory here; use strategy 'lora' (its reference is the "
                    "base with the adapter disabled: no second copy), or beta: 0"))])
        settings = {
            "num_generations": o.num_generations, "max_completion_length": o.max_completion_length,
            "temperature": o.temperature, "beta": o.beta, "loss_type": o.loss_type, "scale_rewards": o.scale_rewards,
            "reward_weights": o.reward_weights, "log_completions": False,
        }
        rewards = [_RewardFunction(r) for r in self.rewards]
        logged = (*GRPO_LOGGED, *(f"rewards/{r.__name__}/mean" for r in rewards))
        # GRPO counts the prompt and sampled tokens itself (the Trainer cannot find them in its batches of rows)
        overrides = {"include_num_input_tokens_seen": "no"}
        return TrainerPlan(grpo_trainer_class(), GRPOConfig, settings, {"reward_funcs": rewards}, logged, overrides)


@hookimpl
def register_objectives(register: Register) -> None:
    register(GRPOObjective)
