"""The fused encoder-decoder MLP: kernels (triton_kernels.py), ops (ops.py) and layers (layers.py)."""
from aefast.mlp.layers import FusedAutoencoder, FusedLinear, FusedMLP

__all__ = ["FusedAutoencoder", "FusedLinear", "FusedMLP"]
