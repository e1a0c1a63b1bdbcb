"""aefast: fused autoencoder kernels for PyTorch."""
from aefast._backends import BackendUnavailableError, available_backends, use_backend
from aefast import nn, willshaw
from aefast.vae.reparameterize import reparameterize_kl
from aefast.willshaw import WillshawMemory

__version__ = "0.1.0"

__all__ = ["BackendUnavailableError", "WillshawMemory", "available_backends", "reparameterize_kl", "use_backend",
           "nn", "willshaw", "__version__"]
