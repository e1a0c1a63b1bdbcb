"""reparameterize_kl on every backend against the plain PyTorch oracle (reference.py)."""
import math

import numpy as np
import pytest
import torch

import aefast
from aefast._buffers import HUGE_PAGES_MIN_BYTES
from aefast.vae import reference
from aefast.vae.ops import NO_CLAMP
from tests.conftest import aefast_ops_run_by, force_cpu_backend

SHAPES = [(1, 1), (7, 3), (97, 123), (3, 5, 17)]

# (dtype, atol, rtol) for z and the gradients. fp32: the kernels' exp/log/cos are within 2 ulp, so
# 1e-5 leaves room for the fp32 reassociation of a sum. fp16/bf16: the kernels compute in fp32 and
# round once, so one unit in the last place of the format (2^-10, 2^-7) bounds the error.
DTYPES = [
    pytest.param(torch.float32, 1e-5, 1e-5, id="float32"),
    pytest.param(torch.float64, 1e-12, 1e-12, id="float64"),
    pytest.param(torch.float16, 1e-5, 2.0**-10, id="float16"),
    pytest.param(torch.bfloat16, 1e-5, 2.0**-7, id="bfloat16"),
]
# The KL is accumulated in fp32 (fp64) whatever the input, so its tolerance is that of the sum.
KL_TOL = {torch.float64: (1e-10, 1e-12)}
KL_TOL_DEFAULT = (1e-4, 1e-5)


def make_inputs(shape, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=gen).to(dtype).to(device)
    logvar = (0.7 * torch.randn(shape, generator=gen)).to(dtype).to(device)
    eps = torch.randn(shape, generator=gen).to(dtype).to(device)
    return mu, logvar, eps


def oracle(mu, logvar, eps, grad_z, grad_kl, reduction, clamp=(-math.inf, math.inf)):
    """Outputs and gradients of the plain expression in the KL dtype, through autograd."""
    compute = reference.kl_dtype(mu.dtype)
    mu_c = mu.detach().to(compute).requires_grad_()
    logvar_c = logvar.detach().to(compute).requires_grad_()
    z, kl = reference.reparameterize_kl_elementwise(mu_c, logvar_c, eps.to(compute), *clamp)
    kl = {"none": kl, "per_sample": kl.sum(-1), "sum": kl.sum(), "mean": kl.sum(-1).mean()}[reduction]
    grads = torch.autograd.grad((z, kl), (mu_c, logvar_c), (grad_z.to(compute), grad_kl))
    return z.detach(), kl.detach(), grads[0], grads[1]


def run_backend(mu, logvar, grad_z, grad_kl, **kwargs):
    mu = mu.detach().clone().requires_grad_()
    logvar = logvar.detach().clone().requires_grad_()
    z, kl = aefast.reparameterize_kl(mu, logvar, **kwargs)
    torch.autograd.backward((z, kl), (grad_z, grad_kl))
    return z.detach(), kl.detach(), mu.grad, logvar.grad


def assert_close(actual, expected, atol, rtol, what):
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), atol=atol, rtol=rtol, msg=what)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", ["per_sample", "none", "sum"])
def test_without_gradients_the_same_outputs_without_a_graph(backend, shape, reduction):
    # Nothing to differentiate (no_grad, or inputs that need no gradient) runs the kernel without the
    # autograd.Function: the same values and shapes, bit for bit, and no grad_fn.
    mu, logvar, _ = make_inputs(shape, torch.float32, backend.device)
    with_graph = aefast.reparameterize_kl(mu.requires_grad_(), logvar, seed=3, reduction=reduction)
    assert all(t.grad_fn is not None for t in with_graph)
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            without = aefast.reparameterize_kl(mu, logvar, seed=3, reduction=reduction)
        for got, expected in zip(without, with_graph):
            assert got.grad_fn is None and got.shape == expected.shape and torch.equal(got, expected.detach())
    plain = aefast.reparameterize_kl(mu.detach(), logvar, seed=3, reduction=reduction)
    assert all(t.grad_fn is None and not t.requires_grad for t in plain)
    assert torch.equal(plain[0], with_graph[0].detach())


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("reduction", ["per_sample", "none"])
def test_matches_oracle_with_eps(backend, shape, dtype, atol, rtol, reduction):
    mu, logvar, eps = make_inputs(shape, dtype, backend.device)
    kl_shape = shape if reduction == "none" else shape[:-1]
    grad_z = torch.randn(shape).to(dtype).to(backend.device)
    grad_kl = torch.randn(kl_shape, dtype=reference.kl_dtype(dtype)).to(backend.device)

    got = run_backend(mu, logvar, grad_z, grad_kl, eps=eps, reduction=reduction)
    want = oracle(mu, logvar, eps, grad_z, grad_kl, reduction)

    assert got[0].dtype == dtype and got[0].shape == shape
    assert got[1].dtype == reference.kl_dtype(dtype) and got[1].shape == kl_shape
    assert_close(got[0], want[0], atol, rtol, "z")
    assert_close(got[1], want[1], *KL_TOL.get(dtype, KL_TOL_DEFAULT), "kl")
    assert_close(got[2], want[2], atol, rtol, "grad mu")
    assert_close(got[3], want[3], atol, rtol, "grad logvar")


@pytest.mark.parametrize("shape", [(5, 1025), (2, 2500)], ids=str)
@pytest.mark.parametrize("reduction", ["per_sample", "none"])
def test_rows_wider_than_one_kernel_tile(backend, shape, reduction):
    """Rows longer than the C++ tile (1024) and the Triton column block (1024): a row's KL sum and
    its noise offsets continue across tiles."""
    mu, logvar, _ = make_inputs(shape, torch.float32, backend.device)
    grad_z = torch.randn(shape).to(backend.device)
    grad_kl = torch.randn(shape if reduction == "none" else shape[:-1]).to(backend.device)
    got = run_backend(mu, logvar, grad_z, grad_kl, seed=77, reduction=reduction)
    noise = reference.noise(77, mu.shape, torch.float32, mu.device)
    want = oracle(mu, logvar, noise, grad_z, grad_kl, reduction)
    assert_close(got[0], want[0], 2e-6, 2e-6, "z")
    assert_close(got[1], want[1], 1e-3, 1e-5, "kl")
    assert_close(got[2], want[2], 1e-5, 1e-5, "grad mu")
    assert_close(got[3], want[3], 2e-6, 2e-5, "grad logvar")


def test_cpp_outputs_large_enough_for_huge_pages():
    """1031 x 1025 float32 is 4.03 MiB a tensor: the C++ backend's z, per-element KL and gradients
    are then allocated on 2 MiB pages (aefast._buffers.empty_on_huge_pages) and must hold the same
    answers. (Triton's outputs are plain torch.empty, and its interpreter would take 20 s here.)"""
    shape = (1031, 1025)
    assert shape[0] * shape[1] * 4 >= HUGE_PAGES_MIN_BYTES
    mu, logvar, eps = make_inputs(shape, torch.float32, torch.device("cpu"), seed=3)
    grad_z, grad_kl = torch.randn(shape), torch.randn(shape)
    with force_cpu_backend("cpp"):
        got = run_backend(mu, logvar, grad_z, grad_kl, eps=eps, reduction="none")
    want = oracle(mu, logvar, eps, grad_z, grad_kl, "none")
    for name, a, b in zip(("z", "kl", "grad mu", "grad logvar"), got, want):
        assert a.shape == shape and a.is_contiguous()
        assert_close(a, b, 1e-5, 1e-5, name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_error_at_most_twice_pytorchs(backend, dtype):
    """DESIGN.md's bar: against an fp32 reference, the kernel's error is at most twice the error of
    the same expression run by PyTorch in the low precision."""
    mu, logvar, eps = make_inputs((97, 123), dtype, backend.device, seed=3)
    z, kl = aefast.reparameterize_kl(mu, logvar, eps=eps)
    z32, kl32 = reference.reparameterize_kl_elementwise(mu.float(), logvar.float(), eps.float())
    z_low = mu + torch.exp(0.5 * logvar) * eps
    kl_low = (-0.5 * (1 + logvar - mu * mu - torch.exp(logvar))).sum(-1)
    assert (z.float() - z32).abs().max() <= 2 * (z_low.float() - z32).abs().max()
    assert (kl - kl32.sum(-1)).abs().max() <= 2 * (kl_low.float() - kl32.sum(-1)).abs().max()


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_scalar_reductions(backend, reduction):
    mu, logvar, eps = make_inputs((3, 5, 17), torch.float32, backend.device)
    grad_z = torch.randn(3, 5, 17).to(backend.device)
    grad_kl = torch.tensor(0.7).to(backend.device)
    got = run_backend(mu, logvar, grad_z, grad_kl, eps=eps, reduction=reduction)
    want = oracle(mu, logvar, eps, grad_z, grad_kl, reduction)
    assert got[1].shape == ()
    for actual, expected, what in zip(got, want, ("z", "kl", "grad mu", "grad logvar")):
        assert_close(actual, expected, 1e-5, 1e-5, what)


@pytest.mark.parametrize("clamp", [(-1.0, 1.0), (-math.inf, 0.5), (-0.25, math.inf), (0.25, 0.25)], ids=str)
def test_logvar_clamp_matches_torch_clamp(backend, clamp):
    """Bounds on both sides, one side, and equal bounds (a fixed variance)."""
    mu, logvar, eps = make_inputs((7, 33), torch.float32, backend.device)
    logvar = logvar * 3
    logvar[0, :5] = torch.tensor([-1.0, 1.0, 0.5, -0.25, 0.25])  # on the bounds: torch passes the gradient
    grad_z = torch.randn(7, 33).to(backend.device)
    grad_kl = torch.randn(7).to(backend.device)
    got = run_backend(mu, logvar, grad_z, grad_kl, eps=eps, logvar_clamp=clamp)
    want = oracle(mu, logvar, eps, grad_z, grad_kl, "per_sample", clamp)
    for actual, expected, what in zip(got, want, ("z", "kl", "grad mu", "grad logvar")):
        assert_close(actual, expected, 1e-5, 1e-5, what)


def test_special_values_propagate_like_the_reference(backend):
    values = torch.tensor([0.0, 1.0, -1.0, 50.0, -50.0, 100.0, -100.0, math.inf, -math.inf, math.nan])
    mu, logvar = torch.meshgrid(values, values, indexing="ij")
    mu, logvar = mu.contiguous().to(backend.device), logvar.contiguous().to(backend.device)
    eps = torch.full_like(mu, 0.5)
    z, kl = aefast.reparameterize_kl(mu, logvar, eps=eps, reduction="none")
    z_ref, kl_ref = reference.reparameterize_kl_elementwise(mu, logvar, eps)
    torch.testing.assert_close(z, z_ref, equal_nan=True, rtol=1e-6, atol=0)
    torch.testing.assert_close(kl, kl_ref, equal_nan=True, rtol=1e-6, atol=0)


@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (0,)], ids=str)
def test_empty_inputs(backend, shape):
    mu = torch.zeros(shape, device=backend.device)
    z, kl = aefast.reparameterize_kl(mu, mu.clone(), seed=1)
    assert z.shape == shape and kl.shape == shape[:-1]
    assert torch.all(kl == 0)


def test_non_contiguous_inputs(backend):
    mu, logvar, eps = make_inputs((33, 20), torch.float32, backend.device)
    z, kl = aefast.reparameterize_kl(mu.t(), logvar.t(), eps=eps.t())
    z_ref, kl_ref = reference.reparameterize_kl_elementwise(mu.t(), logvar.t(), eps.t())
    assert_close(z, z_ref, 1e-6, 1e-6, "z")
    assert_close(kl, kl_ref.sum(-1), 1e-5, 1e-5, "kl")


# ---- the Philox noise ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(97, 123), (33, 2), (50, 1), (17, 64), (6, 7)], ids=str)
def test_seeded_noise_is_the_reference_stream(backend, shape):
    """One seed gives the same z on every backend: the reference regenerates the stream in PyTorch.
    Widths of whole Philox offsets (64), and of rows that end inside one (123, 7, 2, 1), whose tiles
    take some of an offset's normals. The kernels' own exp/log/sin/cos differ from torch's by a few
    ulp: 2e-6 covers |noise| <= 6."""
    mu, logvar, _ = make_inputs(shape, torch.float32, backend.device)
    z, kl = aefast.reparameterize_kl(mu, logvar, seed=2**40 + 7)
    noise = reference.noise(2**40 + 7, mu.shape, torch.float32, mu.device)
    z_ref, kl_ref = reference.reparameterize_kl_elementwise(mu, logvar, noise)
    assert_close(z, z_ref, 2e-6, 2e-6, "z")
    assert_close(kl, kl_ref.sum(-1), 1e-4, 1e-5, "kl")


def test_the_reference_noise_takes_four_normals_per_offset_and_starts_each_row_on_one():
    """Element (row, col) is normal col % 4 of Philox offset row * ceil(cols / 4) + col // 4: a row of
    7 takes two offsets, and drops the second's last normal."""
    from aefast._philox import philox_normal4

    noise = reference.noise(11, (3, 7), torch.float32, torch.device("cpu"))
    normals = philox_normal4(11, torch.arange(6))
    assert torch.equal(noise, normals.reshape(3, 8)[:, :7])
    # Where the width is a multiple of 4 the layout is the elements' own order.
    assert torch.equal(reference.noise(11, (3, 8), torch.float32, torch.device("cpu")).flatten(), normals.flatten())
    assert reference.noise(11, (0, 5), torch.float64, torch.device("cpu")).shape == (0, 5)


def test_a_numpy_seed_is_the_same_as_the_int(backend):
    mu = torch.zeros(5, 7, device=backend.device)
    assert torch.equal(aefast.reparameterize_kl(mu, mu, seed=np.int64(12))[0],
                       aefast.reparameterize_kl(mu, mu, seed=12)[0])


def test_different_seeds_give_different_noise(backend):
    mu = torch.zeros(64, 16, device=backend.device)
    z1, _ = aefast.reparameterize_kl(mu, mu, seed=1)
    z2, _ = aefast.reparameterize_kl(mu, mu, seed=2)
    assert (z1 - z2).abs().min() > 0


def test_noise_mean_variance_and_tail_on_many_samples(backend):
    """Mean 0 and variance 1 within 5 standard errors (a false alarm once in ~3.5 million runs). Triton's
    interpreter draws 2^18 samples (a million took it 48 s), with bounds twice as wide: its stream is
    the reference's, element for element (test_seeded_noise_is_the_reference_stream)."""
    rows = 2**18 // 125 if backend.name == "triton" and backend.device.type == "cpu" else 1_000_000 // 125
    zeros = torch.zeros(rows, 125, device=backend.device)
    z, _ = aefast.reparameterize_kl(zeros, zeros, seed=12345)
    z = z.double().flatten()
    n = z.numel()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / n)
    tail = (z.abs() > 2).double().mean().item()  # P(|N| > 2) = 0.0455
    assert abs(tail - 0.0455003) < 5 * math.sqrt(0.0455 * 0.9545 / n)
    # The four normals of an offset (columns 4g .. 4g + 3) are independent: Box-Muller's cos and sin
    # of one radius, and a second pair. Their correlations are 0 within 5 standard errors.
    by_offset = z.reshape(rows, 125)[:, :124].reshape(-1, 4)
    for first, second in ((0, 1), (0, 2), (1, 3)):
        correlation = torch.corrcoef(by_offset[:, [first, second]].T)[0, 1].item()
        assert abs(correlation) < 5 / math.sqrt(by_offset.shape[0])


def test_backward_sees_the_forward_noise(backend):
    """dz/dlogvar = eps * exp(logvar/2) / 2 = (z - mu) / 2: the regenerated eps is the forward's."""
    mu, logvar, _ = make_inputs((97, 123), torch.float32, backend.device)
    logvar = logvar.requires_grad_()
    z, _ = aefast.reparameterize_kl(mu, logvar, seed=99)
    (grad_logvar,) = torch.autograd.grad(z.sum(), logvar)
    assert_close(grad_logvar, 0.5 * (z - mu), 1e-6, 1e-5, "grad logvar")


def test_torch_manual_seed_makes_runs_repeatable(backend):
    mu = torch.zeros(31, 7, device=backend.device)
    torch.manual_seed(5)
    z1, _ = aefast.reparameterize_kl(mu, mu)
    torch.manual_seed(5)
    z2, _ = aefast.reparameterize_kl(mu, mu)
    z3, _ = aefast.reparameterize_kl(mu, mu)
    assert torch.equal(z1, z2)
    assert not torch.equal(z2, z3)


def test_given_eps_leaves_torchs_generator_as_it_was(backend):
    """No noise is drawn with eps given, nor a seed for it; without eps the seed is drawn."""
    mu = torch.zeros(31, 7, device=backend.device)
    state = torch.get_rng_state()
    aefast.reparameterize_kl(mu, mu, eps=torch.ones_like(mu))
    assert torch.equal(torch.get_rng_state(), state)
    aefast.reparameterize_kl(mu, mu)
    assert not torch.equal(torch.get_rng_state(), state)


# ---- torch.library, autograd, compile -----------------------------------------------------------


@pytest.mark.parametrize("with_eps", [True, False], ids=["eps", "seed"])
@pytest.mark.parametrize("per_element", [False, True], ids=["per_row", "per_element"])
def test_opcheck(backend, with_eps, per_element):
    mu, logvar, eps = make_inputs((9, 13), torch.float32, backend.device)
    args = (
        mu.requires_grad_(), logvar.requires_grad_(), eps if with_eps else None,
        torch.tensor(17), per_element, -3.0, 3.0,
    )
    torch.library.opcheck(torch.ops.aefast.reparameterize_kl.default, args)


@pytest.mark.parametrize("with_eps", [True, False], ids=["eps", "seed"])
@pytest.mark.parametrize("per_element", [False, True], ids=["per_row", "per_element"])
def test_opcheck_backward(backend, with_eps, per_element):
    """The backward op is a custom op of its own (called by the forward's autograd)."""
    mu, logvar, eps = make_inputs((9, 13), torch.float32, backend.device)
    grad_z = torch.randn(9, 13, device=backend.device)
    grad_kl = torch.randn((9, 13) if per_element else (9,), device=backend.device)
    args = (grad_z, grad_kl, mu, logvar, eps if with_eps else None, torch.tensor(17), -3.0, 3.0)
    torch.library.opcheck(torch.ops.aefast.reparameterize_kl_backward.default, args)


@pytest.mark.parametrize("with_eps", [True, False], ids=["eps", "seed"])
def test_gradcheck_float64(backend, with_eps):
    mu, logvar, eps = make_inputs((5, 7), torch.float64, backend.device)
    mu.requires_grad_()
    logvar.requires_grad_()
    kwargs = {"eps": eps} if with_eps else {"seed": 3}
    assert torch.autograd.gradcheck(lambda m, lv: aefast.reparameterize_kl(m, lv, **kwargs), (mu, logvar))


@pytest.mark.parametrize("with_eps", [True, False], ids=["eps", "seed"])
@pytest.mark.parametrize("reduction, clamp", [("per_sample", None), ("none", (-0.5, 0.5)), ("mean", (-0.3, 2.0))])
def test_gradgradcheck_float64(backend, with_eps, reduction, clamp):
    """Double backward (the backward op's own autograd), the clamp's edges among the inputs."""
    mu, logvar, eps = make_inputs((5, 7), torch.float64, backend.device)
    kwargs = {"eps": eps} if with_eps else {"seed": 3}
    assert torch.autograd.gradgradcheck(
        lambda m, lv: aefast.reparameterize_kl(m, lv, reduction=reduction, logvar_clamp=clamp, **kwargs),
        (mu.requires_grad_(), logvar.requires_grad_()))


@pytest.mark.parametrize("with_eps", [True, False], ids=["eps", "seed"])
def test_gradcheck_float64_of_the_op(backend, with_eps):
    """The op's own autograd (what torch.compile traces); the public function takes an
    autograd.Function outside torch.compile."""
    mu, logvar, eps = make_inputs((5, 7), torch.float64, backend.device)
    args = (eps if with_eps else None, torch.tensor(3), False, -2.0, 1.0)
    assert torch.autograd.gradcheck(lambda m, lv: torch.ops.aefast.reparameterize_kl(m, lv, *args),
                                    (mu.requires_grad_(), logvar.requires_grad_()))


@pytest.mark.parametrize("with_eps", [True, False], ids=["eps", "seed"])
@pytest.mark.parametrize("per_element", [False, True], ids=["per_row", "per_element"])
def test_the_eager_function_equals_the_op_bit_for_bit_without_its_dispatch(backend, with_eps, per_element):
    """Outside torch.compile, aefast.reparameterize_kl calls ops.reparameterize_kl, an autograd.Function
    over the op's checks and kernels without its dispatch: the same outputs and gradients to the bit,
    the eps given a gradient too, and no aefast op dispatched."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from aefast.vae import ops

    mu, logvar, eps = make_inputs((9, 13), torch.float32, backend.device)
    grad_z = torch.randn(9, 13, generator=torch.Generator().manual_seed(5)).to(backend.device)
    grad_kl = torch.randn((9, 13) if per_element else (9,), generator=torch.Generator().manual_seed(6)).to(
        backend.device)

    def outputs_and_gradients(call):
        leaves = [t.clone().requires_grad_() for t in ((mu, logvar, eps) if with_eps else (mu, logvar))]
        z, kl = call(*leaves[:2], leaves[2] if with_eps else None, torch.tensor(17), per_element, -3.0, 3.0)
        return [z, kl, *torch.autograd.grad((z, kl), leaves, (grad_z, grad_kl))]

    class RefuseAefastOps(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            assert func.namespace != "aefast", f"{func} dispatched"
            return func(*args, **(kwargs or {}))
    with RefuseAefastOps():
        through_function = outputs_and_gradients(ops.reparameterize_kl)
    for got, expected in zip(through_function, outputs_and_gradients(torch.ops.aefast.reparameterize_kl), strict=True):
        assert torch.equal(got, expected)
    assert aefast_ops_run_by(lambda: outputs_and_gradients(ops.reparameterize_kl)) == {
        "reparameterize_kl", "reparameterize_kl_backward"}


@pytest.mark.parametrize("with_eps", [True, False], ids=["eps", "seed"])
def test_a_gradient_penalty_matches_autograd_through_the_oracle(backend, with_eps):
    """A loss of the gradients themselves (a gradient penalty), in float32 on an odd shape, against
    autograd through the plain expression fed the same noise; every gradient, eps's included."""
    mu, logvar, eps = make_inputs((7, 13), torch.float32, backend.device)
    clamp = (-1.0, 1.0)
    noise = eps if with_eps else reference.noise(5, mu.shape, torch.float32, mu.device)
    weight = torch.randn(7, 13, device=backend.device)

    def penalty(function, mu, logvar, eps):
        z, kl = function(mu, logvar, eps)
        grad_mu, grad_logvar = torch.autograd.grad((z * weight).sum() + kl.sum(), (mu, logvar), create_graph=True)
        return (grad_mu * grad_mu).sum() + (grad_logvar ** 3).sum()

    def fused(mu, logvar, eps):
        kwargs = {"eps": eps} if with_eps else {"seed": 5}
        return aefast.reparameterize_kl(mu, logvar, reduction="none", logvar_clamp=clamp, **kwargs)

    def plain(mu, logvar, eps):
        return reference.reparameterize_kl_elementwise(mu, logvar, eps, *clamp)

    leaves = [t.clone().requires_grad_() for t in (mu, logvar, noise)]
    oracle_leaves = [t.clone().requires_grad_() for t in (mu, logvar, noise)]
    got = torch.autograd.grad(penalty(fused, *leaves), leaves[:2] + leaves[2:] * with_eps)
    want = torch.autograd.grad(penalty(plain, *oracle_leaves), oracle_leaves[:2] + oracle_leaves[2:] * with_eps)
    assert len(got) == 2 + with_eps
    for name, a, b in zip(["mu", "logvar", "eps"], got, want):
        assert_close(a, b, 1e-5, 1e-5, f"d penalty / d {name}")


def test_a_plain_backward_runs_the_backward_kernel_and_a_create_graph_one_the_plain_ops(backend):
    mu, logvar, _ = make_inputs((6, 5), torch.float32, backend.device)
    z, kl = aefast.reparameterize_kl(mu.requires_grad_(), logvar.requires_grad_(), seed=2)
    total = z.sum() + kl.sum()
    assert aefast_ops_run_by(lambda: torch.autograd.grad(total, (mu, logvar), retain_graph=True)) == {
        "reparameterize_kl_backward"}
    assert aefast_ops_run_by(lambda: torch.autograd.grad(total, (mu, logvar), create_graph=True)) == set()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_autocast_region_changes_nothing(backend, dtype):
    """Elementwise, as autocast leaves such ops: the same bits inside a region as outside (the
    reference's float32 math is not cast to 16 bits), forward and backward."""
    mu, logvar, _ = make_inputs((9, 11), dtype, backend.device)
    results = []
    for enabled in (False, True):
        leaves = [t.clone().requires_grad_() for t in (mu, logvar)]
        with torch.autocast(backend.device.type, dtype=torch.bfloat16, enabled=enabled):
            z, kl = aefast.reparameterize_kl(*leaves, seed=6, logvar_clamp=(-2.0, 2.0))
            grads = torch.autograd.grad((z * z).sum() + kl.sum(), leaves)
        results.append((z, kl, *grads))
    for a, b in zip(*results):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_torch_func_transforms_under_auto():
    """torch.func.grad, jacrev and vmap (which refuse a custom op's autograd): auto runs the same math
    and noise in plain ops there, equal to autograd through the op and to a loop over the samples
    within the noise's few float32 ulps (the kernels' exp/log/cos against torch's, as above)."""
    from torch.func import grad, jacrev, vmap

    mu, logvar, _ = make_inputs((5, 6), torch.float64, torch.device("cpu"))

    def loss(mu, logvar):
        z, kl = aefast.reparameterize_kl(mu, logvar, seed=8, logvar_clamp=(-1.0, 1.0))
        return (z * z).sum() + kl.sum()
    leaves = [t.clone().requires_grad_() for t in (mu, logvar)]
    expected = torch.autograd.grad(loss(*leaves), leaves)
    for got, want in zip(grad(loss, argnums=(0, 1))(mu, logvar), expected):
        assert_close(got, want, 2e-6, 2e-6, "torch.func.grad")
    jacobian = jacrev(lambda m: aefast.reparameterize_kl(m, logvar, seed=8)[1])(mu)
    # d KL_i / d mu_jk = mu_ik if i == j else 0 (each sample's KL is 0.5 * sum_k mu_ik^2 + its logvar's terms)
    assert_close(jacobian, torch.eye(5, dtype=mu.dtype)[:, :, None] * mu[None], 1e-12, 1e-12, "jacrev")
    per_sample = vmap(lambda m, lv: aefast.reparameterize_kl(m, lv, seed=8)[0])(mu, logvar)
    looped = torch.stack([aefast.reparameterize_kl(m, lv, seed=8)[0] for m, lv in zip(mu, logvar)])
    assert_close(per_sample, looped, 2e-6, 2e-6, "vmap")


@pytest.mark.parametrize("clamp", [(-math.inf, math.inf), (-0.5, 0.5)], ids=["unclamped", "clamped"])
def test_gradient_flows_to_eps_when_asked(backend, clamp):
    """dz/deps = exp(logvar / 2) of the logvar the sample used: the clamped one under a clamp."""
    mu, logvar, eps = make_inputs((6, 5), torch.float64, backend.device)
    logvar = logvar * 3  # most of it outside the clamp's bounds
    eps.requires_grad_()
    z = aefast.reparameterize_kl(mu, logvar, eps=eps, logvar_clamp=clamp)[0]
    (grad_eps,) = torch.autograd.grad(z.sum(), eps)
    assert_close(grad_eps, torch.exp(0.5 * logvar.clamp(*clamp)), 1e-12, 1e-12, "grad eps")


def test_works_under_torch_compile_fullgraph(backend):
    mu, logvar, eps = make_inputs((37, 19), torch.float32, backend.device)

    def loss(mu, logvar, eps):
        z_eps, kl_eps = aefast.reparameterize_kl(mu, logvar, eps=eps, reduction="mean")
        z_seed, _ = aefast.reparameterize_kl(mu, logvar, seed=11)
        return (z_eps * z_eps).sum() + kl_eps + z_seed.sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in (mu, logvar)]
    eager_leaves = [t.clone().requires_grad_() for t in (mu, logvar)]
    got = compiled(*leaves, eps)
    want = loss(*eager_leaves, eps)
    got.backward()
    want.backward()
    assert_close(got, want, 1e-4, 1e-6, "loss")
    for a, b in zip(leaves, eager_leaves):
        assert_close(a.grad, b.grad, 1e-5, 1e-5, "grad")


def test_unseeded_call_traces_under_torch_compile():
    mu = torch.zeros(8, 4)
    z = torch.compile(lambda m: aefast.reparameterize_kl(m, m)[0], fullgraph=True, backend="aot_eager")(mu)
    assert z.shape == (8, 4) and torch.isfinite(z).all() and z.std() > 0


# ---- bad input ----------------------------------------------------------------------------------

M = torch.zeros(4, 3)
BAD_INPUTS = [
    (dict(mu=[[0.0]], logvar=M), TypeError, "mu must be a torch.Tensor, got list"),
    (dict(mu=M.long(), logvar=M.long()), TypeError, "mu must be float32, float16, bfloat16 or float64, got torch.int64"),
    (dict(mu=M, logvar=M.half()), TypeError, "logvar must have mu's dtype torch.float32, got torch.float16"),
    (dict(mu=M, logvar=torch.zeros(4, 2)), ValueError, r"logvar must have mu's shape \(4, 3\), got \(4, 2\)"),
    (dict(mu=M, logvar=M, eps=torch.zeros(3, 4)), ValueError, r"eps must have mu's shape \(4, 3\), got \(3, 4\)"),
    (dict(mu=M, logvar=M, eps=M.double()), TypeError, "eps must have mu's dtype"),
    (dict(mu=M, logvar=M, eps=M.int()), TypeError, "eps must be float32"),
    (dict(mu=M, logvar=M.to("meta")), ValueError, "logvar must be on mu's device cpu, got meta"),
    (dict(mu=M, logvar=M, eps=M.to("meta")), ValueError, "eps must be on mu's device cpu, got meta"),
    (dict(mu=M, logvar=M, eps=M, seed=1), ValueError, "seed: give either eps or seed"),
    (dict(mu=M, logvar=M, reduction="avg"), ValueError, "reduction must be one of .* got 'avg'"),
    (dict(mu=M, logvar=M, seed=-1), ValueError, r"seed must be in \[0, 2\*\*63\), got -1"),
    (dict(mu=M, logvar=M, seed=2**63), ValueError, "seed must be in"),
    (dict(mu=M, logvar=M, seed=1.5), TypeError, "seed must be an int or None, got float"),
    (dict(mu=M, logvar=M, seed=True), TypeError, "seed must be an int or None, got bool"),
    (dict(mu=M, logvar=M, logvar_clamp=(2.0, 1.0)), ValueError, "logvar_clamp must be .min, max. with min <= max"),
    (dict(mu=M, logvar=M, logvar_clamp=(math.nan, 1.0)), ValueError, "logvar_clamp must be"),
    (dict(mu=M, logvar=M, logvar_clamp=3.0), TypeError, "logvar_clamp must be None or a .min, max. pair"),
    (dict(mu=torch.tensor(1.0), logvar=torch.tensor(1.0)), ValueError, "mu must have at least one dimension"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_input_names_the_argument(kwargs, error, message):
    kwargs = dict(kwargs)
    with pytest.raises(error, match=message):
        aefast.reparameterize_kl(kwargs.pop("mu"), kwargs.pop("logvar"), **kwargs)


@pytest.mark.gpu
def test_device_mismatch_names_the_argument():
    with pytest.raises(ValueError, match="logvar must be on mu's device cpu, got cuda"):
        aefast.reparameterize_kl(M, M.cuda())


def test_works_under_inductor(backend):
    """The default torch.compile backend (Inductor) around the opaque custom op."""
    mu, logvar, eps = make_inputs((37, 19), torch.float32, backend.device)
    fn = lambda m, lv, e: aefast.reparameterize_kl(m, lv, eps=e, reduction="sum")  # noqa: E731
    got = torch.compile(fn, fullgraph=True)(mu, logvar, eps)
    want = fn(mu, logvar, eps)
    assert_close(got[0], want[0], 1e-6, 1e-6, "z")
    assert_close(got[1], want[1], 1e-4, 1e-6, "kl")


@pytest.mark.parametrize("seed,clamp,match", [
    (torch.tensor(-5), NO_CLAMP, r"seed must be a 0-d int64 tensor >= 0, got \(\) torch.int64 -5"),
    (torch.tensor([1, 2]), NO_CLAMP, r"seed must be a 0-d int64 tensor >= 0, got \(2,\)"),
    (torch.tensor(1.5), NO_CLAMP, "seed must be a 0-d int64 tensor >= 0"),
    (torch.tensor(1), (math.nan, 1.0), "clamp_min and clamp_max must be ordered and not NaN"),
    (torch.tensor(1), (3.0, -3.0), "clamp_min and clamp_max must be ordered and not NaN"),
])
def test_direct_op_calls_check_seed_and_clamp(backend, seed, clamp, match):
    """The public function guarantees these; a direct op call gets the same check on every backend
    (before it, the C++ binding refused a negative seed with a TypeError and the others wrapped it)."""
    mu = torch.zeros(4, 3, device=backend.device)
    with pytest.raises(ValueError, match=match):
        torch.ops.aefast.reparameterize_kl(mu, mu, None, seed, False, *clamp)
    with pytest.raises(ValueError, match=match):
        torch.ops.aefast.reparameterize_kl_backward(mu, mu[:, 0].contiguous(), mu, mu, None, seed, *clamp)


def test_direct_op_calls_check_the_dtype(backend):
    mu = torch.zeros(4, 3, dtype=torch.int64, device=backend.device)
    with pytest.raises(TypeError, match="mu must be float32, float16, bfloat16 or float64, got torch.int64"):
        torch.ops.aefast.reparameterize_kl(mu, mu, None, torch.tensor(1), False, *NO_CLAMP)
