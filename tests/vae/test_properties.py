"""Property tests of reparameterize_kl: any shape (rank 1 to 3, sizes 1 and ones no block divides),
every dtype, reduction and clamp, values with inf and NaN; every backend against the reference backend
given the same seed (so the same Philox noise), forward and backward."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import aefast
from tests.vae.test_reparameterize import KL_TOL, KL_TOL_DEFAULT

# (atol, rtol) of z and the gradients per dtype, as in test_reparameterize.py's DTYPES, except float64: the
# seeded noise is fp32 Philox normals, whose log and cos the kernels and torch round up to 2 ulp apart, so
# float64 results agree to fp32's precision only.
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-5, 1e-5), torch.float16: (1e-5, 2.0**-10),
             torch.bfloat16: (1e-5, 2.0**-7)}
SPECIALS = [math.inf, -math.inf, math.nan, 100.0, -100.0]


def run(mu, logvar, grad_z, grad_kl, **kwargs):
    mu, logvar = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    z, kl = aefast.reparameterize_kl(mu, logvar, **kwargs)
    torch.autograd.backward((z, kl), (grad_z, grad_kl))
    return z.detach(), kl.detach(), mu.grad, logvar.grad


@given(shape=st.lists(st.integers(1, 40), min_size=1, max_size=3),
       dtype=st.sampled_from(list(TOLERANCE)), reduction=st.sampled_from(["per_sample", "none", "sum", "mean"]),
       clamp=st.sampled_from([None, (-3.0, 2.0), (-math.inf, 0.5)]), seed=st.integers(0, 2**63 - 1),
       specials=st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(SPECIALS), st.booleans()), max_size=3))
def test_every_backend_matches_the_reference(backend, shape, dtype, reduction, clamp, seed, specials):
    if backend.name == "reference":
        pytest.skip("the reference is the oracle")
    generator = torch.Generator().manual_seed(seed % 2**32)
    mu, logvar = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    for position, value, in_mu in specials:
        (mu if in_mu else logvar).view(-1)[position % mu.numel()] = value
    mu, logvar = mu.to(dtype).to(backend.device), logvar.to(dtype).to(backend.device)
    kl_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    kl_shape = {"none": shape, "per_sample": shape[:-1], "sum": [], "mean": []}[reduction]
    grad_z = torch.randn(shape, generator=generator).to(dtype).to(backend.device)
    grad_kl = torch.randn(kl_shape, generator=generator, dtype=torch.float64).to(kl_dtype).to(backend.device)
    kwargs = dict(seed=seed, reduction=reduction, logvar_clamp=clamp)

    got = run(mu, logvar, grad_z, grad_kl, **kwargs)
    with aefast.use_backend("reference"):
        want = run(mu, logvar, grad_z, grad_kl, **kwargs)

    atol, rtol = TOLERANCE[dtype]
    for name, a, b in zip(("z", "kl", "grad mu", "grad logvar"), got, want):
        tol = KL_TOL.get(dtype, KL_TOL_DEFAULT) if name == "kl" else (atol, rtol)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a.cpu(), b.cpu(), atol=tol[0], rtol=tol[1], equal_nan=True, msg=name)


@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3), other=st.lists(st.integers(1, 9), min_size=1,
                                                                                   max_size=3))
def test_mismatched_shapes_are_refused_naming_logvar(shape, other):
    if shape == other:
        return
    with pytest.raises(ValueError, match="logvar"):
        aefast.reparameterize_kl(torch.zeros(shape), torch.zeros(other))
