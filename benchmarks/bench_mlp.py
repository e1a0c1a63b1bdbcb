"""Fused MLP: a training step (forward + loss + backward) and inference of the 784-256-32-256-784
autoencoder at batch 2^14, and of a narrow 64-wide 4-layer stack at batch 2^20 (2^18 on a CPU),
against the eager nn.Sequential a user writes, torch.compile of it (the default mode; see COMPILE_MODE),
and same-run matmul and copy probes. The training step is the mean squared error: of the autoencoder's
reconstruction against its input, and of the stack's output against a target (aefast: the models' ``loss``,
which fuse it in; eager: F.mse_loss). For each, the peak memory of a training step (aefast._memory.peak_bytes:
the GPU's allocator statistics, or the CPU allocator's record), and, for aefast and eager, the bytes it keeps
for backward (its activations and parameters).
Each case runs in float32 (TF32 off, torch's default) and, on a GPU, in bfloat16 (fp32 accumulation),
where both sides use the tensor cores. The float32 cases time aefast twice: as eager computes (IEEE
float32 products), and as role "aefast tf32x3", its 3xTF32 mode (aefast.mlp.precision: float32-like
error on the tensor cores), both against the same eager and torch.compile runs.
On a GPU, mode "train graphed" times the training step of aefast and of eager each captured in CUDA
graphs (torch.cuda.make_graphed_callables: the forward one graph, the backward another), which take the
host's time out of both: a step whose host time is about its median (the summary's "host") is bound by
the host in mode "train", and "train graphed" then compares the kernels alone.

    pytest benchmarks/bench_mlp.py --benchmark-only [--benchmark-json out.json]
"""
import contextlib
import os

import pytest
import torch
import torch.nn.functional as F

import aefast
from aefast import _backends
from aefast._memory import peak_bytes, saved_for_backward_bytes
from aefast.mlp import fp32_precision
from aefast.nn import FusedAutoencoder, FusedMLP
from conftest import bench_device, copy_probe, matmul_probe, quick, run_benchmark

DEVICE = bench_device()
# bfloat16 where tensor cores make it the precision users train in (and in the quick smoke run, which
# checks that the cases run); on a CPU the comparison would be the reference against itself.
DTYPES = [torch.float32] + ([torch.bfloat16] if DEVICE.type == "cuda" or quick() else [])
ROUNDS = 2 if quick() else (5 if DEVICE.type == "cpu" else 30)
AE_DIMS = [784, 256, 32]
AE_BATCH = 64 if quick() else 2**14
NARROW_DIMS = [64, 64, 64, 64, 64]
NARROW_BATCH = 256 if quick() else (2**20 if DEVICE.type == "cuda" else 2**18)
# torch.compile's default mode. On the H200, mode="max-autotune" took 205 s to compile one training step
# of the autoencoder and then ran at eager's speed (cuBLAS won its autotuning: 1.373 ms against eager's
# 1.374 ms; `python benchmarks/profile_kernels.py compile`), and the suite compiles four such steps.
# AEFAST_BENCH_COMPILE_MODE=max-autotune measures it anyway.
COMPILE_MODE = os.environ.get("AEFAST_BENCH_COMPILE_MODE", "default")
# The "aefast" roles time aefast's kernels: on a GPU Triton's, by name, since auto now runs the
# reference there (_backends.AUTO_ORDER: the 2026-12-05 H200 run timed the kernels slower than eager);
# on the CPU what auto runs (plain autograd, a large narrow stretch in row blocks).
KERNELS = "triton" if DEVICE.type == "cuda" else None


def linear_flops(dims, batch, backward):
    forward = sum(2 * batch * a * b for a, b in zip(dims[:-1], dims[1:]))
    return 3 * forward if backward else forward


def cases():
    """{case key: (fused model, its eager Sequential (same weights), input, dims, batch, dtype, target)};
    the key is the kind ("autoencoder" or "narrow") and the dtype's name."""
    out = {}
    for dtype in DTYPES:
        torch.manual_seed(0)
        autoencoder = FusedAutoencoder(AE_DIMS, output_activation="sigmoid").to(DEVICE, dtype)
        eager_autoencoder = torch.nn.Sequential(autoencoder.encoder.to_sequential(),
                                                autoencoder.decoder.to_sequential())
        narrow = FusedMLP(NARROW_DIMS, activation="relu").to(DEVICE, dtype)
        x_ae = torch.rand(AE_BATCH, AE_DIMS[0], device=DEVICE, dtype=dtype)
        x_narrow = torch.randn(NARROW_BATCH, NARROW_DIMS[0], device=DEVICE, dtype=dtype)
        target_narrow = torch.randn(NARROW_BATCH, NARROW_DIMS[-1], device=DEVICE, dtype=dtype)
        name = dtype_name(dtype)
        out[f"autoencoder {name}"] = (autoencoder, eager_autoencoder, x_ae, AE_DIMS + AE_DIMS[-2::-1], AE_BATCH, dtype,
                                      x_ae)
        out[f"narrow {name}"] = (narrow, narrow.to_sequential(), x_narrow, NARROW_DIMS, NARROW_BATCH, dtype,
                                 target_narrow)
    return out


def dtype_name(dtype):
    return str(dtype).split(".")[-1]


CASES = cases()


def case_name(key, mode):
    _, _, x, dims, batch, dtype, _ = CASES[key]
    return f"{mode} {'-'.join(map(str, dims))} batch {batch} {dtype_name(dtype)}"


def training_step(key, model, eager):
    """The step a user runs: the loss of a batch and its parameter gradients."""
    x, target = CASES[key][2], CASES[key][6]
    parameters = list(model.parameters())
    if eager:
        return lambda: torch.autograd.grad(F.mse_loss(model(x), target), parameters)
    if key.startswith("autoencoder"):
        return lambda: torch.autograd.grad(model.loss(x), parameters)
    return lambda: torch.autograd.grad(model.loss(x, target), parameters)


class _StepLoss(torch.nn.Module):
    """A training step's loss as a module of the step's inputs, as torch.cuda.make_graphed_callables
    takes it: ``training_step``'s loss, of (x) for the autoencoder (its target is x), else (x, target)."""

    def __init__(self, model, eager):
        super().__init__()
        self.model, self.eager = model, eager

    def forward(self, *inputs):
        if self.eager:
            return F.mse_loss(self.model(inputs[0]), inputs[-1])
        return self.model.loss(*inputs)


def graphed_training_step(key, model, eager):
    """``training_step`` with its loss's forward and backward captured in CUDA graphs (on aefast's
    kernels for aefast: make_graphed_callables runs it 3 times, which tunes, then captures it)."""
    x, target = CASES[key][2], CASES[key][6]
    inputs = (x,) if key.startswith("autoencoder") else (x, target)
    with contextlib.nullcontext() if eager else aefast.use_backend(KERNELS):
        loss = torch.cuda.make_graphed_callables(_StepLoss(model, eager), inputs)
    parameters = list(model.parameters())
    return lambda: torch.autograd.grad(loss(*inputs), parameters)


def inference(key, model):
    x = CASES[key][2]

    def run():
        with torch.no_grad():
            return model(x)
    return run


def in_precision(fn, precision):
    def run():
        with fp32_precision(precision):
            return fn()
    return run


def on_kernels(fn):
    """``fn`` on KERNELS (what auto picks where it is None)."""
    if KERNELS is None:
        return fn

    def run():
        with aefast.use_backend(KERNELS):
            return fn()
    return run


def record(benchmark, fn, key, mode, role):
    _, _, x, dims, batch, dtype, _ = CASES[key]
    flops = linear_flops(dims, batch, backward=mode != "infer")
    nbytes = x.numel() * x.element_size() * 2  # at least the input read and the output written
    training = mode == "train"  # (a graphed step's memory is its graphs' pools, allocated at the capture)
    if training:
        fn()  # compiles and tunes first: the tuner's timing buffers are not the step's memory
    extra = {"dims": dims, "batch": batch, "dtype": str(dtype), "peak_memory_bytes": peak_bytes(fn, DEVICE) if training else None,
             "saved_for_backward_bytes": saved_for_backward_bytes(fn) if training and role != "compile" else None}
    if role.startswith("aefast"):
        extra["backend"] = KERNELS or _backends.select("fused_linear", DEVICE)[0]
    run_benchmark(benchmark, fn, DEVICE, component="mlp", case=case_name(key, mode), role=role, nbytes=nbytes,
                  flops=flops, rounds=ROUNDS, extra=extra, host_time=True)


@pytest.mark.parametrize("key", list(CASES))
@pytest.mark.parametrize("mode", ["train", "infer", "train graphed"])
@pytest.mark.parametrize("role", ["aefast", "aefast tf32x3", "eager", "compile", "matmul probe", "copy probe"])
def test_mlp(benchmark, key, mode, role):
    fused, plain, x, _, _, dtype, _ = CASES[key]
    if mode == "train graphed":
        if DEVICE.type != "cuda":
            pytest.skip("CUDA graphs need a GPU")
        if role in ("aefast tf32x3", "compile"):
            pytest.skip("graphed: aefast and eager alone (torch.compile captures graphs of its own)")
        if role in ("aefast", "eager"):
            fn = graphed_training_step(key, fused if role == "aefast" else plain, eager=role == "eager")
            return record(benchmark, on_kernels(fn) if role == "aefast" else fn, key, mode, role)
    if role == "aefast tf32x3":
        if dtype != torch.float32:
            pytest.skip("3xTF32 is a float32 mode")
        if DEVICE.type != "cuda" and not quick():
            pytest.skip("3xTF32 is a mode of the GPU's tensor cores; on a CPU the reference runs either way")
        fn = training_step(key, fused, eager=False) if mode == "train" else inference(key, fused)
        return record(benchmark, on_kernels(in_precision(fn, "tf32x3")), key, mode, role)
    if role == "matmul probe":
        return matmul_probe(benchmark, DEVICE, dtype, component="mlp", case=case_name(key, mode), rounds=ROUNDS)
    if role == "copy probe":
        return copy_probe(benchmark, DEVICE, x.numel() * x.element_size() * 2, component="mlp",
                          case=case_name(key, mode), rounds=ROUNDS)
    model = {"aefast": fused, "eager": plain, "compile": torch.compile(plain, mode=COMPILE_MODE)}[role]
    fn = training_step(key, model, eager=role != "aefast") if mode == "train" else inference(key, model)
    record(benchmark, on_kernels(fn) if role == "aefast" else fn, key, mode, role)
