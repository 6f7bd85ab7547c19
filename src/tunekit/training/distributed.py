"""Which process this is, under ``torchrun`` / ``accelerate launch`` or alone; its device; and the
whole weights of a module sharded across processes (FSDP, DeepSpeed ZeRO-3)."""

from __future__ import annotations

import contextlib
import functools
import os
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def is_distributed_launch() -> bool:
    """Whether this process was started by a multi-process launcher (torchrun, accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """True in a single process, and on global rank 0 of a multi-process launch.

    Only the main process writes files (run directory, saved models) and prints the progress bar.
    """
    return int(os.environ.get("RANK", "0")) == 0


def process_device() -> torch.device:
    """The device of this process: accelerate's ``PartialState().device``.

    ``cuda:<local rank>`` under torchrun on GPUs (so each rank holds its model on its own GPU),
    ``cuda:0`` for one process on a GPU machine, the CPU elsewhere. The Trainer trains there, and a
    model used outside it (evaluate, generate, preflight) must live there too.
    """
    from accelerate import PartialState

    return PartialState().device


def is_sharding_launch() -> bool:
    """Whether accelerate was told to shard the model (FSDP or DeepSpeed, e.g. by ``accelerate launch
    --config_file fsdp.yaml``). The model then stays where it was loaded (the CPU) until the Trainer
    shards it across the GPUs: moving a model that only fits sharded onto one GPU first would run out
    of memory."""
    flags = ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")
    return any(os.environ.get(flag, "false").lower() in {"1", "true", "yes"} for flag in flags)


def wait_for_everyone() -> None:
    """A barrier across processes (a no-op in a single process)."""
    if is_distributed_launch():
        from accelerate import PartialState

        PartialState().wait_for_everyone()


# -- sharded modules (FSDP, DeepSpeed ZeRO-3) -------------------------------------------------------
# Under FSDP or ZeRO-3 no rank holds the whole model after training: FSDP1 wraps the module (its
# own parameters become views of a local shard), FSDP2 turns the module's parameters into DTensor
# shards in place, ZeRO-3 partitions them inside its engine. Saving ``model.state_dict()`` from rank
# 0 would write rank 0's shard; a forward on rank 0 alone would wait forever for the others.
_SHARDED: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()


def remember_sharded(model: Any, wrapped: Any, accelerator: Any) -> None:
    """Record that ``model`` trained inside ``wrapped`` (the Trainer's ``model_wrapped``) and ``accelerator``."""
    _SHARDED[model] = (wrapped, accelerator)


def _fsdp2(model: Any) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return False
    return any(isinstance(m, FSDPModule) for m in model.modules())


def _fsdp1_wrapper(model: Any) -> Any | None:
    wrapped = _SHARDED.get(model, (None, None))[0]
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover
        return None
    return wrapped if isinstance(wrapped, FullyShardedDataParallel) else None


def is_sharded(model: Any) -> bool:
    """Whether ``model``'s weights are split across processes (FSDP1/FSDP2, DeepSpeed ZeRO-3)."""
    if _fsdp2(model) or _fsdp1_wrapper(model) is not None:
        return True
    if model in _SHARDED:
        from transformers.integrations import is_deepspeed_zero3_enabled

        return bool(is_deepspeed_zero3_enabled())
    return False


def gathered_state_dict(model: Any) -> dict[str, Any] | None:
    """The whole state dict of a sharded ``model`` on the main process, or None if it is not sharded.

    A collective: under FSDP / ZeRO-3 every rank must call it, at the same point (the other ranks get
    a dict they should not use). Save with it on the main process:
    ``model.save_pretrained(path, state_dict=state_dict)`` (peft's ``save_pretrained`` keeps the
    adapter's entries of it). Gathered through accelerate as the Trainer's ``save_model`` gathers:
    FSDP1 full state dict on rank 0, FSDP2 ``get_model_state_dict(full_state_dict=True)``, ZeRO-3's
    consolidated 16-bit weights (``stage3_gather_16bit_weights_on_model_save: true`` in its config).
    """
    from tunekit.errors import TunekitError

    if not is_sharded(model):
        return None
    wrapped, accelerator = _SHARDED.get(model, (None, None))
    try:
        if _fsdp2(model):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return dict(get_model_state_dict(model, options=options))
        if (wrapper := _fsdp1_wrapper(model)) is not None:  # what accelerate's get_state_dict does for FSDP1
            from torch.distributed.fsdp import FullStateDictConfig, StateDictType
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            on_gpu = next(wrapper.parameters()).device.type != "cpu"  # offloading CPU tensors crashes gloo runs
            config = FullStateDictConfig(offload_to_cpu=on_gpu, rank0_only=True)
            with FSDP.state_dict_type(wrapper, StateDictType.FULL_STATE_DICT, config):
                return dict(wrapper.state_dict())
        return dict(accelerator.get_state_dict(wrapped))
    except ValueError as exc:  # e.g. ZeRO-3 configured not to gather 16-bit weights on save
        raise TunekitError(f"cannot gather the sharded model's weights for saving: {exc}") from exc


@contextlib.contextmanager
def inference_module(model: Any) -> Iterator[Any]:
    """The module to run forward / ``generate`` on outside the Trainer, on every rank.

    Always ``model`` itself (the transformers / peft module, whose ``generate`` is wanted). Not
    sharded: nothing more. FSDP2 and ZeRO-3: its hooks gather each layer's weights in forward, on
    all ranks together. FSDP1: the weights of the root unit (embeddings, head: no forward of the
    root wrapper runs to gather them) are gathered for the block, nothing written back; the nested
    units gather their own in forward. So every rank must run the same number of forward passes
    (:mod:`tunekit.evaluation` does) and ``generate`` must keep the ranks in step
    (:func:`synced_generation`).
    """
    wrapper = _fsdp1_wrapper(model)
    if wrapper is None:
        yield model
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(wrapper, writeback=False, recurse=False):
        yield model


def synced_generation(model: Any) -> bool:
    """Whether ``generate`` on ``model`` needs ``synced_gpus=True``: a sharded module under several
    processes, where every rank must keep stepping until all are done (transformers detects FSDP2
    and ZeRO-3 itself, but not the inner module of an FSDP1 wrapper)."""
    return is_distributed_launch() and is_sharded(model)


@contextlib.contextmanager
def saving_state_dict(model: Any, state_dict: dict[str, Any] | None) -> Iterator[None]:
    """Within the block, ``model.save_pretrained(...)`` writes ``state_dict`` (when it is not None).

    Lets a save routine that calls ``model.save_pretrained(path)`` write a gathered state dict
    unchanged.
    """
    if state_dict is None:
        yield
        return
    original = model.save_pretrained
    model.save_pretrained = functools.partial(original, state_dict=state_dict)
    try:
        yield
    finally:
        del model.save_pretrained  # the instance attribute; the class's method shows through again
