"""Autoencoder variants of the seeds, built from aefast's components."""
from aefast.models.analysis import LatentGaussian, PcaCheck, binary_codes, hamming_search, interpolate, pca_check
from aefast.models.autoencoders import Autoencoder, DenoisingAutoencoder, SparseAutoencoder
from aefast.models.conv import ConvAutoencoder
from aefast.models.pretrain import pretrain_layerwise
from aefast.models.variational import VAE, ConditionalVAE

__all__ = ["Autoencoder", "ConditionalVAE", "ConvAutoencoder", "DenoisingAutoencoder", "LatentGaussian", "PcaCheck",
           "SparseAutoencoder", "VAE", "binary_codes", "hamming_search", "interpolate", "pca_check",
           "pretrain_layerwise"]
