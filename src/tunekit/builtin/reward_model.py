"""``reward-model``: a sequence-classification head with one output trained on preference pairs (trl's
``RewardTrainer``), so that the chosen answer scores higher than the rejected one. Its saved model is what
the ``model`` reward (``grpo``'s rewards) loads."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from tunekit.builtin.classify import TASK, ClassBatches, in_eval_batches
from tunekit.builtin.objectives import tokenize_pairs
from tunekit.hookspecs import Register, hookimpl
from tunekit.parts import PairScores, PartOptions, TrainerPlan

if TYPE_CHECKING:
    import torch
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase


class RewardModelOptions(PartOptions):
    center_rewards_coefficient: float | None = Field(default=None, ge=0, description=(
        "Adds this times the mean squared reward to the loss, which keeps the rewards centred on 0 (trl's option; "
        "0.01 is the usual value)."))


class RewardModelObjective:
    """Pairwise reward-model training (Bradley-Terry): ``-log sigmoid(r(chosen) - r(rejected))``.

    The base is loaded with a one-output sequence-classification head (on the last real token), and every
    strategy trains it: ``full``, ``head`` (the new head, and optionally the last blocks) and ``lora`` (the head
    trained in full). Pairs are tokenized as ``dpo`` tokenizes them (prompt and answer through the chat
    template, the answer closed by its end token). The eval loss is the pairwise loss, and
    ``preference_accuracy`` the share of pairs whose chosen answer gets the higher reward.
    """

    name: ClassVar[str] = "reward-model"
    rows_help: ClassVar[str] = "It trains on preference pairs: rows with 'prompt', 'chosen' and 'rejected' columns."
    description: ClassVar[str] = "Preference pairs: a one-output reward head trained to score the chosen answer higher (trl)."
    Options: ClassVar[type[RewardModelOptions]] = RewardModelOptions
    task: ClassVar[str] = TASK

    def __init__(self, options: RewardModelOptions):
        self.options = options

    def accepts(self, row_format: str) -> bool:
        return row_format == "preference"

    def model_kwargs(self) -> dict[str, Any]:
        return {"num_labels": 1, "id2label": {0: "reward"}, "label2id": {"reward": 0}}

    def tokenize(self, rows: Dataset, tokenizer: PreTrainedTokenizerBase, *, max_length: int) -> Dataset:
        pairs = tokenize_pairs(rows, tokenizer, max_length, self.name)
        return pairs.map(
            lambda r: {"chosen_ids": r["prompt_ids"] + r["chosen_ids"], "rejected_ids": r["prompt_ids"] + r["rejected_ids"]},
            remove_columns=["prompt_ids"],
        )

    def evaluate_rows(self, model: torch.nn.Module, tokenized: Dataset, *, batch_size: int = 8, pad_token_id: int = 0) -> tuple[float, PairScores]:
        """The mean pairwise loss, and the rewards of every pair's two answers."""
        chosen = rewards(model, [list(ids) for ids in tokenized["chosen_ids"]], batch_size=batch_size, pad_token_id=pad_token_id)
        rejected = rewards(model, [list(ids) for ids in tokenized["rejected_ids"]], batch_size=batch_size, pad_token_id=pad_token_id)
        losses = [math.log1p(math.exp(-(c - r))) if c - r > -30 else r - c for c, r in zip(chosen, rejected, strict=True)]
        return (sum(losses) / len(losses) if losses else float("nan")), PairScores(chosen, rejected)

    def trainer(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> TrainerPlan:
        from trl import RewardConfig, RewardTrainer

        settings = {"center_rewards_coefficient": self.options.center_rewards_coefficient, "max_length": None}  # cut by tokenize
        logged = ("accuracy", "margin", "mean_reward", "min_reward", "max_reward")
        return TrainerPlan(RewardTrainer, RewardConfig, settings, {}, logged)


def rewards(model: torch.nn.Module, sequences: list[list[int]], *, batch_size: int, pad_token_id: int) -> list[float]:
    """The reward (the one logit) a sequence-classification model gives each token sequence."""
    out: list[float] = []
    for _, batch in in_eval_batches(model, iter({"input_ids": ids} for ids in sequences), ClassBatches(pad_token_id), batch_size):
        out.extend(float(x) for x in model(**batch).logits[:, 0])
    return out


@hookimpl
def register_objectives(register: Register) -> None:
    register(RewardModelObjective)
