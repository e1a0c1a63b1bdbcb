"""Where the time goes on a GPU: each component's main case timed with triton.testing.do_bench and
profiled with torch.profiler (the kernels that take the most GPU time), for tuning, and the host's time
per launch and per op call. Not a benchmark: the figures aefast claims come from the bench_*.py files.

    python benchmarks/profile_kernels.py [mlp] [vae] [willshaw] [compile] [host]
    TRITON_INTERPRET=1 python benchmarks/profile_kernels.py stubbed  (on the CPU)
    python benchmarks/profile_kernels.py faked  (on the CPU, without TRITON_INTERPRET)
"""
import contextlib
import functools
import statistics
import sys
import time
from unittest.mock import patch

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.profiler import ProfilerActivity, profile

import aefast
from aefast import _backends
from aefast._triton_launch import launch
from aefast.mlp import ops, set_fp32_precision
from aefast.nn import FusedAutoencoder, FusedMLP
from aefast.willshaw import WillshawMemory, random_patterns

DEVICE = torch.device("cuda")


def timed(name, fn):
    fn()
    torch.cuda.synchronize()
    print(f"{name:<60} {triton.testing.do_bench(fn, warmup=50, rep=200) * 1e3:10.1f} us", flush=True)


def profiled(name, fn, calls=5, rows=10):
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    print(f"--- {name}: {calls} calls")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=70), flush=True)


def mlp():
    """The autoencoder and the narrow stack on the Triton kernels (auto runs the reference on a GPU) in
    float32 (as eager: IEEE; aefast's 3xTF32 mode; both in TF32) and bfloat16. The 3xTF32 rows time
    aefast only: eager's are the float32 rows'. The stack's step is timed both with its backward
    recomputing the hidden activations (the default) and reading saved ones."""
    from aefast.mlp import triton_kernels

    with aefast.use_backend("triton"):
        _mlp_cases()
    for key, choice in triton_kernels._tuned.items():  # (kernel or "weight_grad", operands, M, N, K, GPU)
        print(f"tuned {key}: {choice}", flush=True)


def _mlp_cases():
    for dtype, tf32, precision in ((torch.float32, False, "torch"), (torch.float32, False, "tf32x3"),
                                   (torch.float32, True, "torch"), (torch.bfloat16, False, "torch")):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        set_fp32_precision(precision)
        label = f"{str(dtype).split('.')[-1]}{' tf32' if tf32 else ''}{' 3xtf32' if precision == 'tf32x3' else ''}"
        torch.manual_seed(0)
        ae = FusedAutoencoder([784, 256, 32], output_activation="sigmoid").to(DEVICE, dtype)
        eager_ae = torch.nn.Sequential(ae.encoder.to_sequential(), ae.decoder.to_sequential())
        x = torch.rand(2**14, 784, device=DEVICE, dtype=dtype)
        params, eager_params = list(ae.parameters()), list(eager_ae.parameters())
        narrow = FusedMLP([64] * 5).to(DEVICE, dtype)
        eager_narrow = narrow.to_sequential()
        xn = torch.randn(2**20, 64, device=DEVICE, dtype=dtype)
        target = torch.randn(2**20, 64, device=DEVICE, dtype=dtype)
        nparams, eager_nparams = list(narrow.parameters()), list(eager_narrow.parameters())
        steps = {
            "ae train aefast": lambda: torch.autograd.grad(ae.loss(x), params),
            "ae train eager": lambda: torch.autograd.grad(F.mse_loss(eager_ae(x), x), eager_params),
            "narrow infer aefast": lambda: narrow(xn).sum(),
            "narrow infer eager": lambda: eager_narrow(xn).sum(),
            "narrow train aefast": lambda: torch.autograd.grad(narrow.loss(xn, target), nparams),
            "narrow train eager": lambda: torch.autograd.grad(F.mse_loss(eager_narrow(xn), target), eager_nparams),
            # The stack's output written, then the loss apart (recomputing or saving, below).
            "narrow train aefast, loss apart": lambda: torch.autograd.grad(F.mse_loss(narrow(xn), target), nparams),
        }
        with torch.no_grad():
            timed(f"mlp {label} ae infer aefast", lambda: ae(x))
            if precision == "torch":
                timed(f"mlp {label} ae infer eager", lambda: eager_ae(x))
        for name, fn in steps.items():
            if precision == "torch" or "aefast" in name:
                timed(f"mlp {label} {name}", fn)
        with patch.object(ops, "NARROW_SAVES_ACTIVATIONS", True):  # the backward reads them (before 2026-12-05)
            timed(f"mlp {label} narrow train aefast, loss apart, activations saved",
                  steps["narrow train aefast, loss apart"])
        if dtype == torch.bfloat16 or not tf32:
            profiled(f"mlp {label} ae train aefast", steps["ae train aefast"])
            profiled(f"mlp {label} narrow train aefast", steps["narrow train aefast"])
    torch.backends.cuda.matmul.allow_tf32 = False
    set_fp32_precision("torch")


def compile_time():
    """How long torch.compile(mode="max-autotune") takes to compile the benchmark's training step."""
    import time

    torch.manual_seed(0)
    ae = FusedAutoencoder([784, 256, 32], output_activation="sigmoid").to(DEVICE)
    eager_ae = torch.nn.Sequential(ae.encoder.to_sequential(), ae.decoder.to_sequential())
    x = torch.rand(2**14, 784, device=DEVICE)
    compiled = torch.compile(eager_ae, mode="max-autotune")
    params = list(eager_ae.parameters())
    start = time.perf_counter()
    torch.autograd.grad(F.mse_loss(compiled(x), x), params)
    torch.cuda.synchronize()
    print(f"max-autotune compile of the ae training step: {time.perf_counter() - start:.1f} s", flush=True)
    timed("mlp float32 ae train compile", lambda: torch.autograd.grad(F.mse_loss(compiled(x), x), params))


def vae():
    mu = torch.randn(2**20, 32, device=DEVICE, requires_grad=True)
    logvar = (0.5 * torch.randn(2**20, 32, device=DEVICE)).requires_grad_()
    grad_z, grad_kl = torch.randn(2**20, 32, device=DEVICE), torch.randn(2**20, device=DEVICE)

    def step():
        z, kl = aefast.reparameterize_kl(mu, logvar, seed=1)
        return torch.autograd.grad((z, kl), (mu, logvar), (grad_z, grad_kl))
    for backend in ("triton", "cuda"):
        with aefast.use_backend(backend):
            timed(f"vae fwd+bwd 2^20x32 {backend}", step)
            with torch.no_grad():
                timed(f"vae fwd 2^20x32 {backend}", lambda: aefast.reparameterize_kl(mu, logvar, seed=1))
    with aefast.use_backend("triton"):
        profiled("vae triton fwd+bwd", step)
    dst = torch.empty_like(mu)
    timed("copy probe (2^25 floats)", lambda: dst.copy_(mu))


def willshaw():
    n, ones = 2**18, 16
    generator = torch.Generator(DEVICE).manual_seed(0)
    memory = WillshawMemory(n, device=DEVICE)
    x = random_patterns(2**20, n, ones, generator=generator, device=DEVICE)
    y = random_patterns(2**20, n, ones, generator=generator, device=DEVICE)
    with aefast.use_backend("triton"):
        for _ in range(4):
            memory.store_indices(x, y)
    cues = x[:4096]
    for backend in ("triton", "cuda"):
        with aefast.use_backend(backend):
            timed(f"willshaw store 2^20 pairs n=2^18 M=16 {backend}", lambda: memory.store_indices(x, y))
            for threshold in ("hard", "soft", 8):
                timed(f"willshaw retrieve_indices {threshold} 4096 cues flat {backend}",
                      lambda: memory.retrieve_indices(cues, threshold, flat=True))
            timed(f"willshaw retrieve_indices hard 4096 cues {backend}", lambda: memory.retrieve_indices(cues, "hard"))
            timed(f"willshaw retrieve (dense) hard 4096 cues {backend}", lambda: memory.retrieve(
                torch.zeros(4096, n, dtype=torch.bool, device=DEVICE).scatter_(1, cues, True), "hard"))
            profiled(f"willshaw retrieve_indices hard flat {backend}",
                     lambda: memory.retrieve_indices(cues, "hard", flat=True))
            profiled(f"willshaw store {backend}", lambda: memory.store_indices(x, y))
    probe = torch.empty(2**28, dtype=torch.int64, device=DEVICE)
    timed("read probe 2 GiB (sum)", probe.sum)
    out = torch.empty_like(probe)
    timed("copy probe 2 GiB", lambda: out.copy_(probe))


@triton.jit
def _empty_kernel(x_ptr, BLOCK: tl.constexpr):
    pass


def host_time(name, fn, calls=2000):
    """The host's time per call of ``fn`` on problems so small that the GPU keeps up: the launch path's
    cost, which bounds a step of small kernels (the 2026-12-05 run's autoencoder step: 3.3 ms for
    0.55 ms of kernels)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls
    torch.cuda.synchronize()
    print(f"{name:<60} {host * 1e6:10.1f} us of host time a call", flush=True)


def host():
    """Host time per Triton launch, per launcher, per op call and per training step, beside eager's."""
    from aefast.mlp import layers as mlp_layers
    from aefast.mlp import triton_kernels

    x = torch.randn(64, 32, device=DEVICE)
    weight, bias = torch.randn(16, 32, device=DEVICE), torch.randn(16, device=DEVICE)
    seed = torch.tensor(1)
    y, _ = triton_kernels.linear_forward(x, weight, bias, "relu", "none", 0.0, 1)
    grad_y = torch.randn_like(y)
    host_time("empty Triton kernel (1 pointer)", lambda: _empty_kernel[(1,)](x, BLOCK=16, **_backends.TRITON_LAUNCH))
    host_time("empty Triton kernel (1 pointer), through _triton_launch",
              lambda: launch(_empty_kernel, (1,), x, BLOCK=16, **_backends.TRITON_LAUNCH))
    linear_arguments = (x, weight, bias, y, y, 64, 16, 32, 1, 0.0)
    linear_options = dict(ACT=1, CORRUPT=0, HAS_BIAS=True, SAVE_Z=False, PRECISION=triton_kernels._precision(x.dtype),
                          UPCAST=triton_kernels._upcast(x.dtype), BLOCK_M=64, BLOCK_N=16, BLOCK_K=32, LONG_ROWS=False,
                          num_warps=4, **_backends.TRITON_LAUNCH)
    host_time("_linear_forward_kernel, Triton's launch path",
              lambda: triton_kernels._linear_forward_kernel[(1, 1)](*linear_arguments, **linear_options))
    host_time("_linear_forward_kernel, through _triton_launch",
              lambda: launch(triton_kernels._linear_forward_kernel, (1, 1), *linear_arguments, **linear_options))
    host_time("torch.empty + relu_ (eager, 2 ops)", lambda: torch.empty_like(x).relu_())
    host_time("F.linear + relu (eager)", lambda: F.relu(F.linear(x, weight, bias)))
    host_time("triton_kernels.linear_forward (1 launch)",
              lambda: triton_kernels.linear_forward(x, weight, bias, "relu", "none", 0.0, 1))
    host_time("triton_kernels.linear_backward (dX and dW: 1 launch, 2 in IEEE float32)",
              lambda: triton_kernels.linear_backward(grad_y, x, weight, bias, y, y, "relu", "none", 0.0, 1, None, True))
    with aefast.use_backend("triton"):
        host_time("torch.ops.aefast.fused_linear (op, triton)",
                  lambda: ops.fused_linear_op(x, weight, bias, "relu", "none", 0.0, seed))
        leaf = weight.clone().requires_grad_()
        host_time("torch.ops.aefast.fused_linear (op, differentiable)",
                  lambda: ops.fused_linear_op(x, leaf, bias, "relu", "none", 0.0, seed))
        host_time("ops.fused_linear (autograd.Function, differentiable)",
                  lambda: ops.fused_linear(x, leaf, bias, "relu", "none", 0.0, seed))
        mu, logvar = torch.randn(64, 32, device=DEVICE), torch.randn(64, 32, device=DEVICE)
        host_time("aefast.reparameterize_kl forward (triton)", lambda: aefast.reparameterize_kl(mu, logvar, seed=1))
    torch.manual_seed(0)
    ae = FusedAutoencoder([784, 256, 32], output_activation="sigmoid").to(DEVICE)
    eager_ae = torch.nn.Sequential(ae.encoder.to_sequential(), ae.decoder.to_sequential())
    small = torch.rand(64, 784, device=DEVICE)
    params, eager_params = list(ae.parameters()), list(eager_ae.parameters())
    host_time("ae train step, batch 64, eager", lambda: torch.autograd.grad(F.mse_loss(eager_ae(small), small),
                                                                           eager_params), calls=300)
    for backend in ("reference", "triton"):
        with aefast.use_backend(backend):
            host_time(f"ae train step, batch 64, aefast {backend}", lambda: torch.autograd.grad(ae.loss(small), params),
                      calls=300)
    # Each layer its own autograd node, as before 2026-12-05.
    with patch.object(mlp_layers, "_one_node", lambda plain, hooked: False), aefast.use_backend("triton"):
        host_time("ae train step, batch 64, aefast triton, layer by layer",
                  lambda: torch.autograd.grad(ae.loss(small), params), calls=300)


def cpu_per_call(name, fn, calls, unit="us"):
    """Prints the best of five rounds of ``calls`` calls of ``fn``, per call, after 100 untimed: on the
    CPU, whose other jobs only add time."""
    for _ in range(100):
        fn()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    print(f"{name:<70} {best * 1e6:8.1f} {unit}", flush=True)


def cpu_alternating(cases: dict, calls: int, rounds: int = 10, unit="us a step"):
    """Times each of ``cases`` ({name: (fn, context)}: ``fn`` called inside a fresh ``context()``) in
    ``rounds`` rounds of ``calls`` calls, the cases taking turns within each round, and prints each one's
    median and best round per call, and its median's ratio to the first case's: on this noisy shared
    CPU the turns see the same load, where one case's rounds after another's need not."""
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (fn, context) in cases.items():
            with context():
                for _ in range(10):
                    fn()
                start = time.perf_counter()
                for _ in range(calls):
                    fn()
                times[name].append((time.perf_counter() - start) / calls)
    first = statistics.median(next(iter(times.values())))
    for name, rounds_taken in times.items():
        median = statistics.median(rounds_taken)
        print(f"{name:<70} {median * 1e6:8.1f} {unit} (best {min(rounds_taken) * 1e6:.1f}; "
              f"{median / first:.2f}x the first)", flush=True)


class _NoLaunch:
    """A Triton kernel whose launches do nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def launches_stubbed(module):
    """Inside the block every Triton kernel of ``module`` (jitted or interpreted) launches nothing."""
    with contextlib.ExitStack() as stack:
        for name in dir(module):
            if name.endswith("_kernel") and hasattr(getattr(module, name), "run"):
                stack.enter_context(patch.object(module, name, _NoLaunch()))
        yield


def stubbed():
    """On the CPU (TRITON_INTERPRET=1): the host time of the autoencoder's training step on the Triton
    backend with every launch replaced by a no-op, so the layers', autograd's and the launchers' own
    Python, without Triton's launch path or any kernel; through the three ways in the layers have had.
    Eager's step beside it computes its small matmuls for real (batch 4). Then reparameterize_kl's
    forward and backward on a 4 x 8 input with the cpp kernels, through its op and its autograd.Function."""
    from aefast.mlp import layers as mlp_layers
    from aefast.mlp import triton_kernels

    if not _backends.triton_interpreted():
        sys.exit("the stubbed part runs the Triton backend on the CPU: set TRITON_INTERPRET=1")
    with launches_stubbed(triton_kernels):
        torch.manual_seed(0)
        ae = FusedAutoencoder([784, 256, 32])
        eager_ae = torch.nn.Sequential(ae.encoder.to_sequential(), ae.decoder.to_sequential())
        x = torch.rand(4, 784)
        params, eager_params = list(ae.parameters()), list(eager_ae.parameters())

        def per_call(name, fn):
            cpu_per_call(name, fn, calls=3000, unit="us a step")
        per_call("ae train step, batch 4, eager (its CPU math included)",
                 lambda: torch.autograd.grad(F.mse_loss(eager_ae(x), x), eager_params))
        layer_by_layer = [(mlp_layers, "_one_node", lambda plain, hooked: False)]
        through_ops = layer_by_layer + [(ops, name, getattr(ops, f"{name}_op"))
                                        for name in ("fused_linear", "fused_linear_loss", "fused_narrow_mlp")]
        ways = {"one autograd node (ops.fused_chain)": [], "layer by layer, autograd.Functions": layer_by_layer,
                "layer by layer, the custom ops": through_ops}
        with aefast.use_backend("triton"):
            for way, patches in ways.items():
                with contextlib.ExitStack() as stack:
                    for module, name, value in patches:
                        stack.enter_context(patch.object(module, name, value))
                    per_call(f"ae train step, batch 4, Triton launches stubbed, {way}",
                             lambda: torch.autograd.grad(ae.loss(x), params))
    from aefast.vae import ops as vae_ops

    mu, logvar, seed = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True), torch.tensor(3)
    with aefast.use_backend("cpp"):
        for way, call in (("the custom op", vae_ops.reparameterize_kl_op), ("its autograd.Function", vae_ops.reparameterize_kl)):
            per_call(f"reparameterize_kl forward and backward, 4 x 8, cpp, through {way}",
                     lambda: torch.autograd.grad(sum(t.sum() for t in call(mu, logvar, None, seed, False, -9.0, 9.0)),
                                                 (mu, logvar)))


def faked():
    """On the CPU (without TRITON_INTERPRET): the host time of Triton's real launch path, on a fake sm_90 GPU
    that compiles each launch and runs none (tests/fake_gpu.py; what it leaves out is the C launcher's
    packing and the driver's launch): per empty launch, per linear launcher, and per training step of
    the autoencoder at batch 4 on the Triton backend in float32 and bfloat16, beside eager's step with its
    (small) CPU math, the steps taking turns (cpu_alternating); then
    each compiled variant that spills, with its registers, shared memory (cuobjdump's figures) and launches
    (a narrow variant that spills is compiled and never launched: mlp/triton_kernels.py's _Launch)."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests import fake_gpu

    if _backends.triton_interpreted():
        sys.exit("the faked part compiles the kernels: unset TRITON_INTERPRET")
    fake = fake_gpu.install_for_aefast(check_arguments=False)  # (a GPU's launcher checks nothing)
    from aefast.mlp import triton_kernels

    x, weight, bias = torch.randn(64, 32), torch.randn(16, 32), torch.randn(16)
    cpu_per_call("empty Triton kernel (1 pointer), a launch",
                 lambda: _empty_kernel[(1,)](x, BLOCK=16, **_backends.TRITON_LAUNCH), calls=2000)
    cpu_per_call("triton_kernels.linear_forward (1 launch)",
                 lambda: triton_kernels.linear_forward(x, weight, bias, "relu", "none", 0.0, 1), calls=2000)

    def on_triton(stubbed=False):
        """The Triton backend, with each launch a no-op where ``stubbed``."""
        stack = contextlib.ExitStack()
        stack.enter_context(aefast.use_backend("triton"))
        if stubbed:
            stack.enter_context(launches_stubbed(triton_kernels))
        return stack
    for dtype in (torch.float32, torch.bfloat16):  # IEEE float32 launches dX and dW apart (GRADS_LAUNCHES)
        torch.manual_seed(0)
        ae = FusedAutoencoder([784, 256, 32]).to(dtype)
        eager_ae = torch.nn.Sequential(ae.encoder.to_sequential(), ae.decoder.to_sequential())
        small = torch.rand(4, 784, dtype=dtype)
        params, eager_params = list(ae.parameters()), list(eager_ae.parameters())
        case = f"ae train step, batch 4, {str(dtype).removeprefix('torch.')}"
        with aefast.use_backend("triton"):
            launches = sum(fake.launches.values())
            torch.autograd.grad(ae.loss(small), params)
            launches = sum(fake.launches.values()) - launches

        # Eager's step, then aefast's; then aefast's with each launch a no-op: what is left is aefast's
        # Python, autograd and the allocations; the difference is Triton's launch path (binding,
        # specialization, cache lookup).
        cpu_alternating({
            f"{case}, eager (its CPU math included)":
                (lambda: torch.autograd.grad(F.mse_loss(eager_ae(small), small), eager_params), contextlib.nullcontext),
            f"{case}, triton ({launches} launches)": (lambda: torch.autograd.grad(ae.loss(small), params), on_triton),
            f"{case}, triton, its launches no-ops":
                (lambda: torch.autograd.grad(ae.loss(small), params), functools.partial(on_triton, stubbed=True)),
        }, calls=100)
    with aefast.use_backend("triton"):
        # Which compiled variants spill, for narrow stretches at a 128-wide tile (2026-12-07, triton 3.6:
        # 17-100-100-17 450-1100 bytes a thread in bfloat16; the launchers then run the layers one by one).
        for dims in ([17, 100, 100, 17], [3, 17, 100], [128, 128, 128]):
            stretch = FusedMLP(dims).to(torch.bfloat16)
            rows = torch.empty(4096, dims[0], dtype=torch.bfloat16)  # never read: the fake GPU runs nothing
            torch.autograd.grad(stretch.loss(rows, rows.new_empty(4096, dims[-1])), list(stretch.parameters()))
    for key, variant in fake.variants.items():
        if variant.stack_bytes:
            print(f"spills: {variant.stack_bytes} bytes a thread, {variant.registers} registers, "
                  f"{variant.shared_bytes} bytes shared, launched {variant.launches} times: {key}")


PARTS = {"mlp": mlp, "vae": vae, "willshaw": willshaw, "compile": compile_time, "host": host, "stubbed": stubbed,
         "faked": faked}

if __name__ == "__main__":
    chosen = sys.argv[1:] or ["vae", "willshaw", "mlp"]
    unknown = [name for name in chosen if name not in PARTS]
    if unknown:
        sys.exit(f"unknown part {', '.join(unknown)}: choose from {', '.join(PARTS)}")
    for name in chosen:
        PARTS[name]()
