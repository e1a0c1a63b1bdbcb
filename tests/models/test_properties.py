"""Property tests of the models: any widths and batches (1, and sizes no block divides); the loss and
every gradient of each model with its fused layers on the triton backend (the CPU interpreter here)
equal the reference backend's, given the same torch seed (the models draw their noise from it)."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import aefast
from aefast.models import VAE, Autoencoder, ConditionalVAE, DenoisingAutoencoder, SparseAutoencoder
from tests.conftest import force_cpu_backend

MODELS = {
    "autoencoder": lambda dims: Autoencoder(dims, output_activation="sigmoid"),
    "tied": lambda dims: Autoencoder(dims, activation="tanh", tied=True),
    "linear": lambda dims: Autoencoder(dims, activation=None),
    "sparse l1": lambda dims: SparseAutoencoder(dims, l1=0.01),
    "sparse rho": lambda dims: SparseAutoencoder(dims, rho=0.1, beta=0.5),
    "sparse k": lambda dims: SparseAutoencoder(dims, k=1),
    "denoising mask": lambda dims: DenoisingAutoencoder(dims, noise=("mask", 0.3)),
    "denoising gaussian": lambda dims: DenoisingAutoencoder(dims, noise=("gaussian", 0.2)),
    "vae": lambda dims: VAE(dims, beta=0.5, free_bits=0.01),
    "cvae": lambda dims: ConditionalVAE(dims, num_classes=3),
}


def loss_and_grads(model, batch, seed):
    torch.manual_seed(seed)
    loss = model.loss(batch)
    return loss.detach(), torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])


@given(kind=st.sampled_from(list(MODELS)), dims=st.lists(st.integers(1, 40), min_size=2, max_size=4),
       batch_size=st.integers(1, 33), seed=st.integers(0, 2**31))
def test_the_triton_backend_equals_the_reference(kind, dims, batch_size, seed):
    torch.manual_seed(seed)
    model = MODELS[kind](dims)
    x = torch.rand(batch_size, dims[0])
    batch = (x, torch.randint(0, 3, (batch_size,))) if kind == "cvae" else x
    with force_cpu_backend("triton"):
        got = loss_and_grads(model, batch, seed)
    with aefast.use_backend("reference"):
        want = loss_and_grads(model, batch, seed)
    assert torch.isfinite(want[0])
    # fp32 sums over at most 40 terms per layer, a few layers deep: 1e-5 leaves room for reassociation.
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    for a, b in zip(got[1], want[1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@given(kind=st.sampled_from(list(MODELS)), dims=st.lists(st.integers(-3, 0), min_size=1, max_size=3))
def test_bad_dims_are_refused_by_name(kind, dims):
    with pytest.raises(ValueError, match="dims"):
        MODELS[kind](dims)
