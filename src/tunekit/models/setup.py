"""The model and tokenizer a run trains or serves, set up the same way for fit, load, evaluate and generate.

Loaded onto this process's device (its own GPU under torchrun; left on the CPU under FSDP /
DeepSpeed, which shard from there), in the compute dtype where the base is frozen, prepared
by the quantizer and the strategy (or restored from a save in the strategy's own format), and
handed back in eval mode: the Trainer switches to train mode for its own steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tunekit.config import TuneConfig
    from tunekit.training.precision import Precision


def load_for_run(
    config: TuneConfig, strategy: Any, quantizer: Any, precision: Precision, *, saved: Path | None = None,
    base_path: Path | None = None,
) -> tuple[Any, PreTrainedTokenizerBase, TuneConfig]:
    """``(model, tokenizer, config)``; the config comes back with ``max_length`` clamped to the model's positions.

    ``saved``: a save in the strategy's own format (a peft adapter, ...), restored onto the base,
    whose tokenizer it holds. ``base_path``: a standalone save used as the base.
    """
    from tunekit.models.loading import ModelSource, check_hub_reachable, resolve_source

    base = ModelSource("local", str(base_path)) if base_path else resolve_source(config.model)
    revision = config.revision if base.kind == "hub" else None
    check_hub_reachable(base, revision=revision)  # a typo or an unreachable hub fails in seconds, before the imports below

    import torch
    from transformers import set_seed

    from tunekit.config import clamp_max_length
    from tunekit.formats import as_strategy
    from tunekit.models.loading import add_new_tokens, load_configured_tokenizer, load_model
    from tunekit.training.distributed import is_sharding_launch, process_device

    device = None if is_sharding_launch() else process_device()
    tokenizer = load_configured_tokenizer(config, ModelSource("local", str(saved)) if saved else base, revision=revision)
    # "auto" is recorded as what it resolved to, so a reloaded run wraps its prompts as it trained.
    from tunekit.data.chat import resolved_chat_mode

    mode = resolved_chat_mode(config.data.chat_template, tokenizer)
    if mode != config.data.chat_template:
        config = config.model_copy(update={"data": config.data.model_copy(update={"chat_template": mode})})
    # A frozen base can live in the compute dtype; weights that train keep fp32 master copies.
    dtype = precision.compute_dtype if strategy.uses_adapters else torch.float32
    task, task_kwargs = objective_model(config)
    model: Any = load_model(
        base, dtype=dtype, extra_kwargs={**quantizer.load_kwargs(precision.compute_dtype), **task_kwargs},
        trust_remote_code=config.trust_remote_code, revision=revision, device=device, task=task,
    )
    if task != "causal-lm" and tokenizer.pad_token_id is not None:
        # transformers pools a sequence classifier at the last token that is not the pad token
        model.config.pad_token_id = tokenizer.pad_token_id
    config = clamp_max_length(config, model)  # a max_length past the model's positions
    new_tokens = add_new_tokens(tokenizer, config.data.add_tokens)  # ids (added already by the tokenizer's loading)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        # New rows start at the mean of the old ones (transformers' mean_resizing), not at random.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    checkpointing = config.training.gradient_checkpointing
    model = quantizer.prepare_for_training(model, gradient_checkpointing=checkpointing)
    set_seed(config.training.seed)
    part = as_strategy(strategy, quantized=quantizer.quantizes_base)
    teach = getattr(part, "train_new_tokens", None) if new_tokens else None  # optional: not in the protocol
    teaches_new_tokens = teach is not None
    if teach is not None:
        teach(new_tokens)  # before prepare: LoRA's peft config takes the indices
    model = part.load(model, saved) if saved is not None else part.prepare(model)
    if new_tokens and not teaches_new_tokens and saved is None:
        warn_untrained_new_tokens(part, model, new_tokens)
    if checkpointing and hasattr(model, "enable_input_require_grads"):
        # With a frozen embedding layer, checkpointed blocks get inputs that do not require
        # grad, and the adapters/head behind them would silently receive no gradient.
        model.enable_input_require_grads()
    if getattr(model, "generation_config", None) is not None and tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if device is not None and not quantizer.quantizes_base:  # new adapter/head weights join the base on its device
        model = model.to(device)
    model.eval()
    return model, tokenizer, config


def objective_model(config: TuneConfig) -> tuple[str, dict[str, Any]]:
    """``(task, from_pretrained kwargs)`` the configured objective loads its model with (see
    :class:`tunekit.parts.Objective`): ``("causal-lm", {})`` unless the objective says otherwise."""
    if config.objective is None:
        return "causal-lm", {}
    from tunekit.config import build_part

    objective = build_part("objective", config.objective, "objective")
    task = str(getattr(objective, "task", "causal-lm"))
    kwargs = getattr(objective, "model_kwargs", None)
    return task, (dict(kwargs()) if callable(kwargs) else {})


def warn_untrained_new_tokens(part: Any, model: Any, token_ids: list[int]) -> None:
    """Say once when the new embedding rows of ``data.add_tokens`` will not train.

    A strategy that freezes the input embeddings and has no ``train_new_tokens(ids)`` (LoRA has:
    peft's trainable token indices) leaves the new tokens at their initial embedding, the mean of
    the old ones. The prepared model is asked, not the strategy's name, so a third-party strategy
    is judged by what it does.
    """
    import logging

    embeddings = model.get_input_embeddings()
    if embeddings is not None and not embeddings.weight.requires_grad:
        logging.getLogger(__name__).warning(
            "tunekit: strategy %r does not train the embeddings, so the %d new tokens of data.add_tokens keep "
            "their initial embedding (the mean of the others); use 'lora' or 'full' to train them.",
            getattr(part, "name", "?"), len(token_ids),
        )
