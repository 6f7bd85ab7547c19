"""When two forwards that should agree do agree: the tolerance of tunekit's model probes.

The probes (:mod:`tunekit.training.loss`, :mod:`tunekit.training.shared_prefix`,
:mod:`tunekit.training.packing`) run a model two ways that are mathematically equal and check
the logits agree before a faster path is used. The two ways use different kernels and shapes
(attention over a KV cache or not, another matmul blocking, another CPU's kernels), so their
floating-point results differ by rounding, and that difference grows with the logits' scale and
the model's depth: on SmolLM2-135M (30 layers, logits up to 33) on an AMD EPYC the shared-prefix
probe's two paths differ by 0.0039 in float32 (``scripts/probe_rounding.py``), which a fixed
``atol=1e-3`` read as a broken path. A real fault (a shifted position, a row seeing another's
tokens) moves logits by whole units.

>>> import torch
>>> a = torch.tensor([30.0, 0.0, -5.0])
>>> same_logits(a + torch.tensor([0.004, 0.004, 0.0]), a), same_logits(a + torch.tensor([0.0, 0.5, 0.0]), a)
(True, False)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

RELATIVE = 1e-3
"""Allowed difference, relative to the largest logit, in float32."""
EPS_FACTOR = 4
"""In a 16-bit dtype: this many of its rounding steps (``finfo(dtype).eps``), relative to the largest logit."""


def same_logits(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Whether ``got`` equals ``want`` (same shape) up to rounding: every element within
    ``tol * (|want| + max(1, max |want|))``, ``tol`` from :data:`RELATIVE` and the logits' dtype
    (the floor of 1 keeps a toy model's small logits to an absolute 1e-3)."""
    import torch

    if got.shape != want.shape:
        return False
    tol = max(RELATIVE, EPS_FACTOR * torch.finfo(want.dtype).eps) if want.is_floating_point() else RELATIVE
    scale = float(want.float().abs().max()) if want.numel() else 0.0
    return bool(torch.allclose(got.float(), want.float(), rtol=tol, atol=tol * max(scale, 1.0)))
