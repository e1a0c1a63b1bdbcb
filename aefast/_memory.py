"""The peak memory a callable allocates, on a GPU or the CPU: the measure of the benchmarks' and the
tests' memory figures."""
from __future__ import annotations

from typing import Callable

import torch


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes ``fn()`` allocates on ``device`` at its peak, above what was live before it (what it
    returns counts while it is alive inside the call). On a GPU from the caching allocator's statistics,
    on the CPU from the allocator's record of each allocation and free (torch.profiler), which sees
    what torch allocates (not a library's own buffers, such as a BLAS's workspace)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        raise ValueError(f"device must be a CUDA device or the CPU, got {device}")
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recorded:
        fn()
    changes = sorted((event.start_ns(), event.nbytes()) for event in recorded.profiler.kineto_results.events()
                     if event.name() == "[memory]")
    live = peak = 0
    for _, nbytes in changes:  # allocations positive, frees negative
        live += nbytes
        peak = max(peak, live)
    return peak
