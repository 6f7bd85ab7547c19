"""Preference objectives on trl's trainers: ``dpo`` (and its loss variants) on prompt/chosen/rejected pairs.

tunekit tokenizes the pairs itself, exactly as ``sft`` tokenizes a prompt and its answer (the chat
template, the trained end token, answer offsets found in the text tokenized once), so a DPO run after an
SFT run sees the very tokens SFT trained; trl's ``DPOTrainer`` then computes its loss. With LoRA the
reference model is the base with the adapter disabled: no second copy of the model is kept (see
:mod:`tunekit.builtin.trl_reference`). A full fine-tune keeps a frozen copy of the starting model as the reference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, field_validator

from tunekit.builtin.objectives import tokenize_pairs
from tunekit.builtin.trl_reference import AdapterReference, frozen_copy
from tunekit.evaluation import score_pairs
from tunekit.hookspecs import Register, hookimpl
from tunekit.parts import PairScores, PartOptions, TrainerPlan

if TYPE_CHECKING:
    import torch
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase


DPO_LOSSES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft",
)
"""trl 1.16's DPO loss types (``DPOConfig.loss_type``)."""

PAIR_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


class DPOOptions(PartOptions):
    beta: float = Field(default=0.1, gt=0, description=(
        "How far the tuned model may move from the reference: higher keeps it closer (trl's DPO beta; the IPO "
        "regularisation for loss_type='ipo')."))
    loss_type: list[str] = Field(default_factory=lambda: ["sigmoid"], min_length=1, description=(
        "trl's DPO loss: sigmoid (DPO), ipo, hinge (SLiC), robust, exo_pair, nca_pair, bco_pair, sppo_hard, aot, "
        "aot_unpaired, apo_zero, apo_down, discopop, sft; several are summed (with loss_weights)."))
    loss_weights: list[float] | None = Field(default=None, description="One weight per loss_type when several are combined.")
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=0.5, description=(
        "The assumed share of pairs whose labels are flipped (robust and exo_pair losses; must be > 0 for exo_pair)."))

    @field_validator("loss_type", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        value = [value] if isinstance(value, str) else value
        unknown = [v for v in value if v not in DPO_LOSSES] if isinstance(value, list) else []
        if unknown:
            raise ValueError(f"unknown DPO loss {unknown}; trl's are {', '.join(DPO_LOSSES)}")
        return value


def dpo_trainer_class() -> type[Any]:
    """trl's ``DPOTrainer``, told that tunekit tokenized the pairs, and with the adapter-disabled base as reference."""
    from trl import DPOTrainer

    class _DPOTrainer(AdapterReference, DPOTrainer):  # type: ignore[misc]
        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            if set(PAIR_COLUMNS) <= set(dataset.column_names or []):
                return dataset  # tokenized by tunekit (tokenize_pairs), as sft tokenizes an answer
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    return _DPOTrainer


DPO_LOGGED = (
    "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
    "logps/chosen", "logps/rejected",
)


class DPOObjective:
    """Direct preference optimisation (trl's ``DPOTrainer``) on prompt/chosen/rejected pairs.

    The loss raises the chosen answer's log-probability against the rejected one's, each measured
    against the reference model (``beta`` says how far from it). ``loss_type`` picks trl's variant
    (``ipo``, ``hinge``, ``robust``...). The eval loss is the cross-entropy per token of the chosen
    answers, and ``preference_accuracy`` the share of pairs whose chosen answer is the more likely.
    """

    name: ClassVar[str] = "dpo"
    description: ClassVar[str] = "Preference pairs: trl's DPO (sigmoid, ipo, hinge, robust...) against the reference model."
    Options: ClassVar[type[DPOOptions]] = DPOOptions

    def __init__(self, options: DPOOptions):
        self.options = options

    def accepts(self, row_format: str) -> bool:
        return row_format == "preference"

    def tokenize(self, rows: Dataset, tokenizer: PreTrainedTokenizerBase, *, max_length: int) -> Dataset:
        return tokenize_pairs(rows, tokenizer, max_length, self.name)

    def evaluate_rows(self, model: torch.nn.Module, tokenized: Dataset, *, batch_size: int = 8, pad_token_id: int = 0) -> tuple[float, PairScores]:
        return score_pairs(model, tokenized, batch_size=batch_size, pad_token_id=pad_token_id)

    def trainer(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> TrainerPlan:
        from trl import DPOConfig

        o = self.options
        settings = {"beta": o.beta, "loss_type": list(o.loss_type), "loss_weights": o.loss_weights,
                    "label_smoothing": o.label_smoothing, "max_length": None}  # tokenize_pairs cut the pairs already
        return TrainerPlan(dpo_trainer_class(), DPOConfig, settings, {"ref_model": frozen_copy(model)}, DPO_LOGGED)


@hookimpl
def register_objectives(register: Register) -> None:
    register(DPOObjective)
