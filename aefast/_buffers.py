"""How tensors cross into aefast._C: numpy views of CPU tensors (float16 and bfloat16 as raw 16-bit
words, since numpy has no bfloat16), or device pointers and the current stream for CUDA tensors."""
from __future__ import annotations

import numpy as np
import torch

from aefast import _backends

DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}


def cpu_buffer(tensor: torch.Tensor | None) -> np.ndarray | None:
    """A numpy view of a contiguous CPU tensor (no copy), or None."""
    if tensor is None:
        return None
    tensor = tensor.detach()
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.view(torch.int16)
    return tensor.numpy()


def device_pointer(tensor: torch.Tensor | None) -> int:
    """The device address of a contiguous CUDA tensor, or 0 for None."""
    return 0 if tensor is None else tensor.data_ptr()


def current_stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


# From this size on, a new CPU tensor that is about to be written whole is advised onto 2 MiB pages
# first: its first write then faults in a 512th as many pages (192 MiB: 15 ms instead of 80 on the CI
# machine, whose transparent huge pages are "madvise").
HUGE_PAGES_MIN_BYTES = 4 << 20


def empty_on_huge_pages(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty(shape)``; on the CPU, when large and aefast._C is built, backed by huge pages."""
    tensor = torch.empty(shape, dtype=dtype, device=device)
    if tensor.device.type == "cpu" and tensor.numel() * tensor.element_size() >= HUGE_PAGES_MIN_BYTES:
        compiled = _backends.compiled_module()
        if compiled is not None:
            compiled.advise_huge_pages(cpu_buffer(tensor))
    return tensor
