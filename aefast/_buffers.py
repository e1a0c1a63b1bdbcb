"""How tensors cross into aefast._C: numpy views of CPU tensors (float16 and bfloat16 as raw 16-bit
words, since numpy has no bfloat16), or device pointers and the current stream for CUDA tensors."""
from __future__ import annotations

import numpy as np
import torch

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
