"""What a callable holds in memory, on a GPU or the CPU: its peak allocation, and what autograd keeps
for backward. The measures of the benchmarks' and the tests' memory figures."""
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


def saved_for_backward_bytes(fn: Callable[[], object], smallest: int = 0) -> int:
    """Bytes of the distinct storages that autograd saves for backward while ``fn()`` runs (a step's
    activation memory, its parameters included), each storage once, counting only tensors of at least
    ``smallest`` elements (so that a large ``smallest`` leaves the parameters out). Not what
    torch.compile's graphs save, which they do on their own."""
    storages = {}

    def pack(tensor):
        if tensor.numel() >= smallest:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())
