"""How the fused MLP's Triton kernels multiply float32 matrices.

- ``"torch"`` (the default): follow torch's TF32 switch, so kernel and eager compute the same thing:
  ``"tf32"`` when ``torch.backends.cuda.matmul.allow_tf32`` is on, ``"ieee"`` when it is off (torch's
  default).
- ``"ieee"``: float32 products on the FMA units, as cuBLAS computes with TF32 off. Slow in Triton:
  an H200 reached a third of eager's speed this way.
- ``"tf32x3"``: each float32 operand split into a TF32 part and a TF32 remainder, three tensor-core
  products summed in float32 (the big x small terms and big x big; CUTLASS's "3xTF32"). The operands
  keep about 21 of float32's 24 significant bits, so the result is close to float32's at tensor-core
  speed; ``tests/mlp/test_gpu.py`` holds its error against float64 to DESIGN.md's bar for low
  precision, at most twice that of torch's float32.
- ``"tf32"``: one tensor-core product of operands rounded to 10 bits, as torch with TF32 on.

bfloat16 and float16 inputs always use the tensor cores and ignore this setting; so does the CPU,
where the reference runs torch's own matmul.

Like torch's switch, the setting is global and read when a kernel launches, so a backward pass
uses the setting in force when it runs.
"""
from __future__ import annotations

import contextlib

import torch

FP32_PRECISIONS = ("torch", "ieee", "tf32x3", "tf32")
_setting = "torch"


def set_fp32_precision(precision: str) -> None:
    """Sets how the MLP kernels multiply float32 matrices: one of ``FP32_PRECISIONS``."""
    global _setting
    if not isinstance(precision, str) or precision not in FP32_PRECISIONS:
        raise ValueError(f"precision must be one of {FP32_PRECISIONS}, got {precision!r}")
    _setting = precision


def get_fp32_precision() -> str:
    """The setting, ``"torch"`` included; ``dot_precision`` resolves it."""
    return _setting


@contextlib.contextmanager
def fp32_precision(precision: str):
    """``with aefast.mlp.fp32_precision("tf32x3"): ...`` sets the precision inside the block only."""
    previous = get_fp32_precision()
    set_fp32_precision(precision)
    try:
        yield
    finally:
        set_fp32_precision(previous)


def dot_precision(dtype: torch.dtype) -> str:
    """The ``input_precision`` of the kernels' ``tl.dot`` for inputs of ``dtype``."""
    if dtype != torch.float32:
        return "tf32"  # ignored by tl.dot for 16-bit operands
    if _setting == "torch":
        return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return _setting
