"""Verified merges: fold adapters into the base and prove the logits did not change.

Tolerance: on probe inputs, ``max |merged - adapter| <= tol * max(1, max |adapter|)`` over all
logits, with ``tol = 1e-4`` for fp32 weights and ``2e-2`` for bf16/fp16 weights (their
rounding alone moves logits by about 1e-2). The merge is done in place with peft's
``merge_adapter``, checked, and only then unloaded; on a mismatch it is undone
(``unmerge_adapter``) and ``MergeVerificationError`` is raised, so the adapter model is intact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunekit.errors import TunekitError

if TYPE_CHECKING:
    import torch

PROBE_TEXTS = ("The quick brown fox jumps over the lazy dog.", "1 2 3 4 5", "Hello")


class MergeVerificationError(TunekitError):
    """The merged model's logits differ from the adapter model's beyond the stated tolerance."""


def tolerance_for(dtype: torch.dtype) -> float:
    import torch

    return 1e-4 if dtype == torch.float32 else 2e-2


def probe_inputs(tokenizer: Any) -> list[torch.Tensor]:
    import torch

    return [torch.tensor([tokenizer(t)["input_ids"][:32]]) for t in PROBE_TEXTS]


def _logits(model: torch.nn.Module, probes: list[torch.Tensor]) -> list[torch.Tensor]:
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return [model(input_ids=p.to(device)).logits.float().cpu() for p in probes]


def verified_merge(model: Any, tokenizer: Any) -> Any:
    """Merge a peft model's adapters into its base, verify the logits, and return the plain model."""
    probes = probe_inputs(tokenizer)
    was_training = model.training
    model.eval()
    try:
        before = _logits(model, probes)
        model.merge_adapter()
        after = _logits(model, probes)
        dtype = next(p for p in model.parameters()).dtype
        tol = tolerance_for(dtype)
        worst = max(float((a - b).abs().max() / max(1.0, float(b.abs().max()))) for a, b in zip(after, before, strict=True))
        if worst > tol:
            model.unmerge_adapter()
            raise MergeVerificationError(
                f"the merged model's logits differ from the adapter model's by {worst:.2e} (relative), more "
                f"than the tolerance {tol:.0e} for {str(dtype).removeprefix('torch.')} weights. The adapter "
                "model is unchanged; save the adapter instead (tuner.save), or merge on an fp32 base."
            )
    finally:
        model.train(was_training)
    return model.unload()
