"""Choose the training precision from the hardware, never from a hard-coded default.

bf16 autocast on a CPU without native bf16 instructions is an order of magnitude slower
than fp32 (trl's bf16 default made a step about 13x slower on our CPU), and fp16 autocast
is not supported on CPUs at all; so ``auto`` is fp32 on such CPUs, bf16 on GPUs that
support it and fp16 on older GPUs. An explicit choice the hardware cannot honour is a
``HardwareError`` before anything loads.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tunekit.errors import HardwareError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Precision:
    """The chosen precision: its name and the Trainer flags that implement it."""

    name: str
    device: str

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    @property
    def fp16(self) -> bool:
        return self.name == "fp16"

    @property
    def compute_dtype(self) -> torch.dtype:
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name, torch.float32)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_precision(requested: str) -> Precision:
    """Resolve ``training.precision`` (``auto``, ``fp32``, ``bf16``, ``fp16``) for this machine."""
    import torch

    if torch.cuda.is_available():
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return Precision("bf16" if bf16_ok else "fp16", "cuda")
        if requested == "bf16" and not bf16_ok:
            raise HardwareError(
                f"training.precision='bf16' but {torch.cuda.get_device_name()} does not support "
                "bf16; use precision='fp16' or 'auto'."
            )
        return Precision(requested, "cuda")
    if requested == "fp16":
        raise HardwareError(
            "training.precision='fp16' needs a GPU; this machine has none. Use precision='auto' "
            "(fp32 on this CPU)."
        )
    if requested == "bf16" and not cpu_has_native_bf16():
        raise HardwareError(
            "training.precision='bf16' on a CPU without native bf16 instructions (AVX512-BF16 or "
            "AMX) runs about an order of magnitude slower than fp32. Use precision='auto' or 'fp32'."
        )
    return Precision("fp32" if requested == "auto" else requested, "cpu")
