"""The dtype the components accumulate in, and return their reductions in (the VAE's KL, the fused
MLP's loss): float32 for float32, float16 and bfloat16 inputs, float64 for float64."""
from __future__ import annotations

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32
