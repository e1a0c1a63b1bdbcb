"""Time per training epoch of each of the seeds' models on the bundled digits (batch 128): aefast's
model (fused layers, the fused reparameterize + KL) against the same model in plain PyTorch, an
nn.Sequential twin with the same weights and, for the VAE, eager sampling and KL.

    pytest benchmarks/bench_models.py --benchmark-only [--benchmark-json out.json]
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from aefast.data import load_digits
from aefast.mlp.layers import FusedMLP
from aefast.models import VAE, Autoencoder, DenoisingAutoencoder, SparseAutoencoder
from aefast.train import fit
from conftest import bench_device, quick, run_benchmark

DEVICE = bench_device()
ROUNDS = 2 if quick() else 30  # an epoch takes about 10 ms on the CI machine: enough rounds for a steady median
X, _ = load_digits()
X = (X[:256] if quick() else X).to(DEVICE)


class EagerReconstructionLoss:
    """The autoencoders' loss as a user writes it: decode, then torch's loss of the output (aefast's
    models fuse it into the decoder's last layer, which an nn.Sequential decoder has no method for)."""

    def _code_loss(self, code, x):
        return self.reconstruction_loss(self.decode(code), x)


def plain_twin(model):
    """The same model with every FusedMLP swapped for its nn.Sequential (same weights)."""
    twin = copy.deepcopy(model)
    for name, module in list(twin.named_children()):
        if isinstance(module, FusedMLP):
            setattr(twin, name, module.to_sequential())
    if isinstance(twin, Autoencoder):
        twin.__class__ = type(f"Eager{type(model).__name__}", (EagerReconstructionLoss, type(model)), {})
    return twin


class EagerVAE(VAE):
    """VAE whose sample and KL are the eager code a user writes."""

    def negative_elbo_terms(self, x, encoder_input, decoder_condition=None):
        mu, logvar = self.encoder(encoder_input).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        kl = -0.5 * (1 + logvar - mu * mu - logvar.exp())
        output = self.decoder(z).clamp(1e-7, 1 - 1e-7)
        return F.binary_cross_entropy(output, x, reduction="sum") / x.shape[0], kl.mean(0)


def models():
    torch.manual_seed(0)
    vae = VAE([64, 64, 2])
    eager_vae = plain_twin(vae)
    eager_vae.__class__ = EagerVAE
    return {
        "ae 64-32-16": Autoencoder([64, 32, 16], output_activation="sigmoid"),
        "sparse 64-32-16": SparseAutoencoder([64, 32, 16], l1=1e-3, output_activation="sigmoid"),
        "denoising 64-32-16": DenoisingAutoencoder([64, 32, 16], output_activation="sigmoid"),
        "vae 64-64-2": (vae, eager_vae),
    }


MODELS = models()


def pair(name):
    entry = MODELS[name]
    return entry if isinstance(entry, tuple) else (entry, plain_twin(entry))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("role", ["aefast", "eager"])
def test_epoch(benchmark, name, role):
    fused, plain = pair(name)
    model = (fused if role == "aefast" else plain).to(DEVICE)
    run_benchmark(benchmark, lambda: fit(model, X, epochs=1, batch_size=128, seed=0, progress=False), DEVICE,
                  component="models", case=f"epoch {name} digits", role=role, items=1, unit="epochs",
                  nbytes=X.numel() * 4, rounds=ROUNDS, extra={"rows": X.shape[0]})
