"""Drop-in layers: ``FusedLinear``, ``FusedMLP`` and ``FusedAutoencoder`` (see aefast/mlp/layers.py)."""
from aefast.mlp.layers import FusedAutoencoder, FusedLinear, FusedMLP

__all__ = ["FusedAutoencoder", "FusedLinear", "FusedMLP"]
