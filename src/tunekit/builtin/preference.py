"""Preference objectives on trl's trainers: ``dpo`` (and its loss variants) on prompt/chosen/rejected pairs,
``kto`` on answers judged good or bad.

tunekit tokenizes the pairs itself, exactly as ``sft`` tokenizes a prompt and its answer (the chat
template, the trained end token, answer offsets found in the text tokenized once), so a DPO run after an
SFT run sees the very tokens SFT trained; trl's ``DPOTrainer`` then computes its loss. With LoRA the
reference model is the base with the adapter disabled: no second copy of the model is kept (see
:mod:`tunekit.builtin.trl_reference`). A full fine-tune keeps a frozen copy of the starting model as the reference.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from tunekit.builtin.objectives import PairTokenizer, tokenize_pairs
from tunekit.builtin.trl_reference import AdapterReference, frozen_copy
from tunekit.errors import DataError
from tunekit.evaluation import answer_logprobs, score_pairs
from tunekit.hookspecs import Register, hookimpl
from tunekit.parts import PairScores, PartOptions, TrainerPlan

log = logging.getLogger(__name__)

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
    reference: Literal["auto", "copy"] = Field(default="auto", description=(
        "The reference model: 'auto' is the base with the adapter disabled under LoRA (no second copy in memory) and a "
        "frozen copy of the starting model otherwise; 'copy' keeps a frozen copy of the starting model in every case."))

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
    rows_help: ClassVar[str] = "It trains on preference pairs: rows with 'prompt', 'chosen' and 'rejected' columns."
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
        reference = frozen_copy(model, even_with_adapters=o.reference == "copy")
        return TrainerPlan(dpo_trainer_class(), DPOConfig, settings, {"ref_model": reference}, DPO_LOGGED)


class KTOOptions(PartOptions):
    beta: float = Field(default=0.1, gt=0, description="How far the tuned model may move from the reference (trl's KTO beta).")
    loss_type: Literal["kto", "apo_zero_unpaired"] = Field(default="kto", description="trl's KTO loss: kto, or apo_zero_unpaired.")
    desirable_weight: float = Field(default=1.0, gt=0, description=(
        "Weight of the good answers' loss; with more bad answers than good ones, raise it (trl suggests a "
        "ratio of weights x counts between 1 and 4/3)."))
    undesirable_weight: float = Field(default=1.0, gt=0, description="Weight of the bad answers' loss.")


def tokenize_judged(rows: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """Judged answers as ``prompt_ids``/``completion_ids``/``label`` (pairs give a good and a bad answer each),
    tokenized as sft tokenizes an answer and cut to ``max_length``; shuffled once (seed 0) so that the
    neighbours KTO estimates its KL term from are not the file's order."""
    pairs = PairTokenizer(tokenizer)
    paired = "chosen" in rows.column_names

    def judged(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"prompt_ids": [], "completion_ids": [], "label": [], "length": [], "row": []}
        answers = ([(batch["chosen"], True), (batch["rejected"], False)] if paired
                   else [(batch["completion"], None)])
        for k, prompt in enumerate(batch["prompt"]):
            for column, good in answers:
                prompt_ids, answer = pairs.answer(prompt, column[k])
                room = max(0, max_length - len(prompt_ids))
                out["prompt_ids"].append(prompt_ids)
                out["completion_ids"].append(answer[:room])
                out["label"].append(bool(batch["label"][k]) if good is None else good)
                out["length"].append(len(prompt_ids) + len(answer[:room]))
                out["row"].append(indices[k])
        return out

    out = rows.map(judged, batched=True, with_indices=True, remove_columns=rows.column_names, desc="tokenizing (kto)")
    kept = [i for i, ids in enumerate(out["completion_ids"]) if ids]
    if not kept:
        raise DataError(f"no answer has room within max_length={max_length}; raise training.max_length or shorten the prompts.")
    if len(kept) < len(out):
        log.warning("kto: dropping %d answers whose prompt fills max_length=%d.", len(out) - len(kept), max_length)
        out = out.select(kept)
    if len(set(out["label"])) < 2:
        log.warning("kto: every answer is judged %s; KTO learns from good and bad answers together.", "good" if out["label"][0] else "bad")
    return out.shuffle(seed=0).flatten_indices()


def kto_trainer_class() -> type[Any]:
    """trl's ``KTOTrainer``, told that tunekit tokenized the answers; the KL neighbours as trl pairs them."""
    from trl import KTOTrainer

    class _KTOTrainer(AdapterReference, KTOTrainer):  # type: ignore[misc]
        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            if "completion_ids" not in (dataset.column_names or []):
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            if not self.calculate_KL:
                return dataset
            # As trl does after its own tokenization: each answer's KL completion is its neighbour's in a fixed
            # batch of per_device_train_batch_size, (x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1}).
            def rotate(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
                return {**batch, "KL_completion_ids": [batch["completion_ids"][-1], *batch["completion_ids"][:-1]]}

            return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)

    return _KTOTrainer


KTO_LOGGED = ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected", "kl")


class KTOObjective:
    """Kahneman-Tversky optimisation (trl's ``KTOTrainer``) on answers judged good or bad, one at a time.

    Takes ``{"prompt", "completion", "label"}`` rows (label true for a good answer) or preference pairs
    (each gives its chosen answer as good and its rejected one as bad). The eval loss is the cross-entropy
    per token of the good answers. Batches keep their order (trl estimates the KL term from each answer's
    neighbours), so the rows are shuffled once when tokenized.
    """

    name: ClassVar[str] = "kto"
    rows_help: ClassVar[str] = ("It trains on judged answers ('prompt', 'completion' and a true/false 'label') or on "
                                "preference pairs ('prompt', 'chosen', 'rejected').")
    description: ClassVar[str] = "Answers judged good or bad (unpaired, or pairs unpaired): trl's KTO against the reference model."
    Options: ClassVar[type[KTOOptions]] = KTOOptions

    def __init__(self, options: KTOOptions):
        self.options = options

    def accepts(self, row_format: str) -> bool:
        return row_format in {"unpaired_preference", "preference"}

    def tokenize(self, rows: Dataset, tokenizer: PreTrainedTokenizerBase, *, max_length: int) -> Dataset:
        return tokenize_judged(rows, tokenizer, max_length)

    def evaluate_rows(
        self, model: torch.nn.Module, tokenized: Dataset, *, batch_size: int = 8, pad_token_id: int = 0
    ) -> tuple[float, PairScores | None]:
        """The cross-entropy per token of the good answers; for rows that came as pairs, the pairs' scores too."""
        labels = list(tokenized["label"])
        scored = answer_logprobs(model, [list(p) for p in tokenized["prompt_ids"]], [list(c) for c in tokenized["completion_ids"]],
                                 batch_size=batch_size, pad_token_id=pad_token_id)
        good = [scored[i] for i, label in enumerate(labels) if label]
        tokens = sum(n for _, n in good)
        loss = -sum(s for s, _ in good) / tokens if tokens else float("nan")
        by_row: dict[int, dict[bool, float]] = {}
        for (logp, _), row, label in zip(scored, tokenized["row"], labels, strict=True):
            by_row.setdefault(row, {})[label] = logp
        if by_row and all(len(answers) == 2 for answers in by_row.values()):  # every source row gave one good, one bad answer
            return loss, PairScores([a[True] for a in by_row.values()], [a[False] for a in by_row.values()])
        return loss, None

    def trainer(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> TrainerPlan:
        from trl import KTOConfig

        o = self.options
        settings = {"beta": o.beta, "loss_type": o.loss_type, "desirable_weight": o.desirable_weight,
                    "undesirable_weight": o.undesirable_weight, "max_length": None}  # cut by tokenize_judged
        # the KL term pairs each answer with its neighbour in a fixed batch: trl requires sequential batches
        overrides = {"train_sampling_strategy": "sequential"}
        return TrainerPlan(kto_trainer_class(), KTOConfig, settings, {"ref_model": frozen_copy(model)}, KTO_LOGGED, overrides)


@hookimpl
def register_objectives(register: Register) -> None:
    register(DPOObjective)
    register(KTOObjective)
