"""Reparameterize + KL, forward and backward at B x D = 2^20 x 32 fp32: aefast against the eager
code a user writes (randn_like, exp, KL sum), torch.compile of that code, and same-run probes (a
tensor copy for bandwidth, torch.randn for the cost of noise alone).

    pytest benchmarks/bench_vae.py --benchmark-only [--benchmark-json out.json]
"""
import pytest
import torch

import aefast
from aefast import _backends
from conftest import bench_device, copy_probe, quick, run_benchmark

DEVICE = bench_device()
ROWS, COLS = (2**10, 32) if quick() else (2**20, 32)
CASE = f"fwd+bwd {ROWS}x{COLS} float32"
# On the CPU, 9 rounds: aefast's outputs go on 2 MiB pages, and on the CI machine (transparent huge pages
# "madvise") the first three to five calls of a process took 250-540 ms while the kernel compacted
# memory to find such pages, then about 80 (without the advice, 170-200 every call): a median of 9
# stays on the steady state a training loop sees.
ROUNDS = 2 if quick() else (9 if DEVICE.type == "cpu" else 50)
# Bytes the fused passes must move: forward reads mu, logvar and writes z (+ the KL row); backward
# reads grad_z, mu, logvar (+ grad_kl) and writes grad_mu, grad_logvar. eps is never stored.
FUSED_BYTES = 8 * ROWS * COLS * 4 + 2 * ROWS * 4


def eager_reparameterize_kl(mu, logvar):
    eps = torch.randn_like(mu)
    z = mu + torch.exp(0.5 * logvar) * eps
    kl = -0.5 * (1 + logvar - mu * mu - logvar.exp()).sum(-1)
    return z, kl


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    mu = torch.randn(ROWS, COLS, device=DEVICE, requires_grad=True)
    logvar = (0.5 * torch.randn(ROWS, COLS, device=DEVICE)).requires_grad_()
    grad_z = torch.randn(ROWS, COLS, device=DEVICE)
    grad_kl = torch.randn(ROWS, device=DEVICE)
    return mu, logvar, grad_z, grad_kl


def step(fn, problem):
    mu, logvar, grad_z, grad_kl = problem

    def run():
        z, kl = fn(mu, logvar)
        # autograd.grad, not backward: no accumulation into .grad adds a pass to every round.
        return torch.autograd.grad((z, kl), (mu, logvar), (grad_z, grad_kl))

    return run


def test_aefast(benchmark, problem):
    backend, _ = _backends.select("reparameterize_kl", DEVICE)
    run_benchmark(benchmark, step(lambda m, lv: aefast.reparameterize_kl(m, lv, seed=1), problem), DEVICE,
                  component="vae", case=CASE, role="aefast", nbytes=FUSED_BYTES, rounds=ROUNDS,
                  extra={"backend": backend, "shape": [ROWS, COLS], "dtype": "float32"}, host_time=True)


def test_aefast_cuda(benchmark, problem):
    """On a GPU the cuda backend's kernels beside auto's (Triton's): the row marked "(cuda)"; auto's order
    (_backends.AUTO_ORDER) follows the faster."""
    why = aefast.available_backends()["cuda"] if DEVICE.type == "cuda" else "the benchmark runs on the CPU"
    if why is not True:
        pytest.skip(f"cuda backend: {why}")
    with aefast.use_backend("cuda"):
        run_benchmark(benchmark, step(lambda m, lv: aefast.reparameterize_kl(m, lv, seed=1), problem), DEVICE,
                      component="vae", case=CASE, role="aefast cuda", nbytes=FUSED_BYTES, rounds=ROUNDS,
                      extra={"backend": "cuda", "shape": [ROWS, COLS], "dtype": "float32"}, host_time=True)


def test_eager(benchmark, problem):
    run_benchmark(benchmark, step(eager_reparameterize_kl, problem), DEVICE, component="vae", case=CASE,
                  role="eager", nbytes=FUSED_BYTES, rounds=ROUNDS, host_time=True)


def test_torch_compile(benchmark, problem):
    compiled = torch.compile(eager_reparameterize_kl)
    run_benchmark(benchmark, step(compiled, problem), DEVICE, component="vae", case=CASE, role="compile",
                  nbytes=FUSED_BYTES, rounds=ROUNDS, host_time=True)


def test_copy_probe(benchmark):
    copy_probe(benchmark, DEVICE, FUSED_BYTES, component="vae", case=CASE, rounds=ROUNDS)


def test_randn_probe(benchmark):
    out = torch.empty(ROWS, COLS, device=DEVICE)
    run_benchmark(benchmark, lambda: out.normal_(), DEVICE, component="vae", case=CASE, role="randn probe",
                  nbytes=ROWS * COLS * 4, rounds=ROUNDS)
