"""seed=None draws the noise's seed on the host at each call; a CUDA graph captured around the call
would keep that one number and replay the same noise at every replay. So every entry point that
draws one refuses while a graph is captured (on the CPU here: the capture is faked by patching
aefast._checks._capturing_cuda_graph), and takes a seed given by the caller as before."""
import pytest
import torch

import aefast
from aefast import _checks
from aefast.models import DenoisingAutoencoder
from aefast.nn import FusedAutoencoder

REFUSED = "seed is None while a CUDA graph is captured"


@pytest.fixture
def capturing(monkeypatch):
    monkeypatch.setattr(_checks, "_capturing_cuda_graph", lambda device: True)


def test_the_autoencoder_loss_refuses_to_draw_its_corruption_seed_in_a_capture(capturing):
    torch.manual_seed(0)
    model, x = FusedAutoencoder([9, 5, 3]), torch.rand(6, 9)
    with pytest.raises(ValueError, match=REFUSED):
        model.loss(x, corruption=("mask", 0.25))
    with pytest.raises(ValueError, match="the corruption's noise"):
        model.loss(x, corruption=("gaussian", 0.1))
    # A given seed, or no noise at all, runs as outside a capture.
    given = model.loss(x, corruption=("mask", 0.25), seed=7)
    clean = model.loss(x)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_checks, "_capturing_cuda_graph", lambda device: False)
        assert torch.equal(given, model.loss(x, corruption=("mask", 0.25), seed=7))
        assert torch.equal(clean, model.loss(x))


def test_reparameterize_kl_refuses_to_draw_eps_in_a_capture(capturing):
    torch.manual_seed(1)
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match=REFUSED):
        aefast.reparameterize_kl(mu, logvar)
    z, _ = aefast.reparameterize_kl(mu, logvar, seed=4)
    eps = torch.randn(5, 3)
    z_eps, _ = aefast.reparameterize_kl(mu, logvar, eps=eps)
    torch.testing.assert_close(z_eps, mu + torch.exp(logvar / 2) * eps, rtol=1e-6, atol=1e-6)
    assert z.shape == mu.shape


def test_the_denoising_model_refuses_to_draw_its_noise_in_a_capture(capturing):
    torch.manual_seed(2)
    model, x = DenoisingAutoencoder([8, 4], noise=("mask", 0.5)), torch.rand(3, 8)
    with pytest.raises(ValueError, match=REFUSED):
        model.loss(x)
    assert model.corrupt(x, seed=3).shape == x.shape


def test_outside_a_capture_a_drawn_seed_differs_at_each_call():
    torch.manual_seed(3)
    model, x = FusedAutoencoder([9, 5, 3]), torch.rand(6, 9)
    assert not torch.equal(model.loss(x, corruption=("mask", 0.5)), model.loss(x, corruption=("mask", 0.5)))
