"""Peak memory of a block of work: CUDA allocations on a GPU, the process's resident set on a CPU."""

from __future__ import annotations

import resource
from pathlib import Path
from types import TracebackType
from typing import Any


def _vm_hwm_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """Context manager measuring peak memory during its block.

    On CUDA: ``torch.cuda.max_memory_allocated`` after a reset. On Linux CPUs: the resident
    set's high-water mark (``VmHWM``), reset at entry through ``/proc/self/clear_refs`` so an
    earlier, larger job in the same process does not inflate it. Elsewhere: ``ru_maxrss``,
    which cannot be reset (``kind`` says which was used).
    """

    def __init__(self, device: Any):
        # "cuda", "cuda:1" or a torch.device: the statistics are those of that very GPU (under
        # torchrun each rank measures its own, not GPU 0).
        self.device = str(device)
        self.is_cuda = self.device.split(":")[0] == "cuda"
        self.peak_bytes = 0
        self.kind = ""

    def _cuda(self) -> Any:
        import torch

        device = torch.device(self.device)
        return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())

    def __enter__(self) -> PeakMemory:
        if self.is_cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self._cuda())
            self.kind = "cuda_max_allocated"
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.kind = "process_rss_peak"
            except OSError:
                self.kind = "process_maxrss_since_start"
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.is_cuda:
            import torch

            self.peak_bytes = int(torch.cuda.max_memory_allocated(self._cuda()))
        elif self.kind == "process_rss_peak" and (hwm := _vm_hwm_bytes()) is not None:
            self.peak_bytes = hwm
        else:
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
