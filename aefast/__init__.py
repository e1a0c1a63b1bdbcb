"""aefast: fused autoencoder kernels for PyTorch."""
from aefast._backends import BackendUnavailableError, available_backends, use_backend
from aefast.vae.reparameterize import reparameterize_kl

__version__ = "0.1.0"

__all__ = ["BackendUnavailableError", "available_backends", "reparameterize_kl", "use_backend", "__version__"]
