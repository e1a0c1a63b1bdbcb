"""The dtype the components accumulate in, and return their reductions in (the VAE's KL, the fused
MLP's loss): float32 for float32, float16 and bfloat16 inputs, float64 for float64; and the ops'
shield from an enclosing autocast region."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The dtype an enclosing autocast region casts to on ``device``, or None outside one."""
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def no_autocast(device: torch.device):
    """A context in which torch ops on ``device`` run in the dtypes they are given. The kernels' plain
    PyTorch math accumulates in float32 on purpose, which an enclosing autocast region would cast to
    16 bits: the ops run their kernels in it (the layers cast for autocast themselves)."""
    if autocast_dtype(device) is not None:
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()  # 1 us, against 6 for entering torch.autocast on every op call
