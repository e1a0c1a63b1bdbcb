"""The fused encoder-decoder MLP: kernels (triton_kernels.py), ops (ops.py), layers (layers.py), and how
the kernels multiply float32 matrices (precision.py)."""
from aefast.mlp.layers import FusedAutoencoder, FusedLinear, FusedMLP
from aefast.mlp.precision import FP32_PRECISIONS, fp32_precision, get_fp32_precision, set_fp32_precision

__all__ = ["FP32_PRECISIONS", "FusedAutoencoder", "FusedLinear", "FusedMLP", "fp32_precision", "get_fp32_precision",
           "set_fp32_precision"]
