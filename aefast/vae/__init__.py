"""The VAE's reparameterized sample with its KL term."""
from aefast.vae.reparameterize import reparameterize_kl

__all__ = ["reparameterize_kl"]
