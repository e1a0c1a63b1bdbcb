"""aefast._C re-checks what it is handed: wrong sizes, item sizes or layouts raise, never crash.
Also the portable kernel copies (no AVX-512, no AVX2) agree with the reference."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from aefast import _backends
from aefast._philox import philox_normal

C = _backends.compiled_module()


def run_with_kernel_copy(isa, code):
    """Run ``code`` (which prints "ok") in a child process whose aefast._C dispatches to the kernel
    copy ``isa`` ("native": the one this CPU gets)."""
    env = {**os.environ, **({} if isa == "native" else {"AEFAST_CPU_ISA": isa})}
    cpu = C.cpu_features()
    if isa == "avx2" and not (cpu["avx2"] and cpu["fma"]):
        pytest.skip("this CPU has no AVX2+FMA")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def buffers(rows, cols, dtype=np.float32):
    make = lambda n: np.zeros(n, dtype)  # noqa: E731
    return make(rows * cols), make(rows * cols), make(rows * cols), np.zeros(rows, np.float32)


def test_forward_rejects_wrong_sizes_item_sizes_and_layouts():
    mu, logvar, z, kl = buffers(4, 3)
    args = dict(rows=4, cols=3, dtype="float32", seed=1, per_element=False, clamp_min=-math.inf, clamp_max=math.inf)
    C.vae_forward_cpu(mu, logvar, None, z, kl, **args)  # well-formed: runs
    with pytest.raises(ValueError, match="mu: expected 15 elements, got 12"):
        C.vae_forward_cpu(mu, logvar, None, z, kl, **{**args, "rows": 5})
    with pytest.raises(ValueError, match="kl: expected 12 elements"):
        C.vae_forward_cpu(mu, logvar, None, z, kl, **{**args, "per_element": True})
    with pytest.raises(TypeError, match="logvar: expected items of 4 bytes, got 8"):
        C.vae_forward_cpu(mu, logvar.astype(np.float64), None, z, kl, **args)
    with pytest.raises(ValueError, match="z: buffer must be C-contiguous"):
        C.vae_forward_cpu(mu, logvar, None, np.zeros((3, 4), np.float32).T, kl, **args)
    with pytest.raises(ValueError, match="rows must be >= 0"):
        C.vae_forward_cpu(mu, logvar, None, z, kl, **{**args, "rows": -4})
    with pytest.raises(TypeError, match="dtype must be"):
        C.vae_forward_cpu(mu, logvar, None, z, kl, **{**args, "dtype": "int8"})
    read_only = np.zeros(12, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="[Ww]ritable|read-only"):
        C.vae_forward_cpu(mu, logvar, None, read_only, kl, **args)


def test_backward_rejects_wrong_grad_kl_size():
    mu, logvar, z, kl = buffers(4, 3)
    with pytest.raises(ValueError, match="grad_kl: expected 4 elements, got 12"):
        C.vae_backward_cpu(z, mu, mu, logvar, None, z.copy(), z.copy(), 4, 3, "float32", 1, False,
                           -math.inf, math.inf)


def test_philox_offsets_are_64_bit():
    """Offsets past 2^32 carry into the counter's second word instead of wrapping around."""
    start = 2**32 - 8
    out = np.zeros(16, np.float32)
    C.philox_normal_cpu(5, start, out)
    expected = philox_normal(5, torch.arange(start, start + 16))
    torch.testing.assert_close(torch.from_numpy(out), expected, atol=2e-6, rtol=2e-6)
    wrapped_around = philox_normal(5, torch.arange(0, 8))  # what a 32-bit offset would give
    assert not torch.allclose(torch.from_numpy(out[8:]), wrapped_around)


@pytest.mark.parametrize("isa", ["generic", "avx2", "native"])
def test_philox_uniforms_are_the_formulas_bit_for_bit(isa):
    """The uniforms the layers' mask corruption draws on the CPU (``_philox.compiled_stream``) equal
    the PyTorch formulas exactly, in every kernel copy, at offsets past 2^32 and counts that end inside
    a SIMD vector and a tile; their normals stay within the C++ math's 2e-6."""
    code = """
import numpy as np, torch
from aefast import _backends
from aefast._philox import compiled_stream, philox_normal, philox_uniform
C = _backends.compiled_module()
for seed in (0, 5, 2**63 - 25, 2**64 - 1):
    for start, count in ((0, 1), (0, 1037), (2**32 - 700, 2053), (2**64 - 300, 300)):
        out = np.full(count, -1.0, np.float32)
        C.philox_uniform_cpu(seed, start, out)
        offsets = torch.arange(count, dtype=torch.int64) + (start - 2**64 if start >= 2**63 else start)
        assert torch.equal(torch.from_numpy(out), philox_uniform(seed, offsets)), (seed, start, count)
        assert 0.0 <= out.min() and out.max() < 1.0
    for first in (0, 2**33 + 5):  # from offset 0, and a block of rows far into a large input
        offsets = torch.arange(first, first + 3001)
        assert torch.equal(compiled_stream("uniform", seed, 3001, first=first), philox_uniform(seed, offsets))
        torch.testing.assert_close(compiled_stream("normal", seed, 3001, first=first), philox_normal(seed, offsets),
                                   atol=2e-6, rtol=2e-6)
print("ok")
"""
    run_with_kernel_copy(isa, code)


def test_compiled_stream_gives_way_where_tensors_have_no_memory():
    """Fake tensors (torch.compile's tracing, FakeTensorMode) and torch.func's transforms get None, and
    the caller the formulas: a kernel has no buffer to write there."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from aefast._philox import compiled_stream
    if C is None:
        pytest.skip("aefast._C is not built")
    with FakeTensorMode():
        assert compiled_stream("uniform", 1, 10) is None
    inside = []
    torch.func.vmap(lambda x: inside.append(compiled_stream("uniform", 1, 10)) or x)(torch.zeros(2))
    assert inside == [None]
    assert compiled_stream("uniform", 1, 10).shape == (10,)


def test_philox_reference_matches_known_answer():
    """Philox4x32-10 known-answer vector (Random123 kat_vectors: counter 0, key 0)."""
    from aefast._philox import philox4x32_10

    words = [int(w) for w in philox4x32_10(0, torch.zeros(1, dtype=torch.int64))]
    assert words == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_portable_kernel_copies_match_the_reference(isa):
    """Forward and backward of the generic and AVX2 copies against the reference backend."""
    code = """
import torch, aefast
from aefast import _backends
assert _backends.compiled_module().cpu_features()["kernel_isa"] == "{isa}"
for dtype, tol in [(torch.float32, 2e-6), (torch.float64, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)]:
    mu = torch.randn(53, 29).to(dtype).requires_grad_(); logvar = torch.randn(53, 29).to(dtype).requires_grad_()
    grad_z = torch.randn(53, 29).to(dtype)
    results = {}
    for name in ("cpp", "reference"):
        with aefast.use_backend(name):
            z, kl = aefast.reparameterize_kl(mu, logvar, seed=7, logvar_clamp=(-1.5, 1.5))
            grads = torch.autograd.grad((z, kl), (mu, logvar), (grad_z, torch.ones_like(kl)))
        results[name] = (z, kl, *grads)
    for got, want in zip(results["cpp"], results["reference"]):
        torch.testing.assert_close(got.double(), want.double(), atol=tol, rtol=tol)
print("ok")
""".replace("{isa}", isa)
    run_with_kernel_copy(isa, code)


def test_direct_op_calls_are_checked_before_any_kernel():
    """torch.ops.aefast.* are reachable from Python; mismatched tensors raise instead of reaching a
    kernel that takes raw pointers."""
    op = torch.ops.aefast.reparameterize_kl
    good = torch.zeros(4, 3)
    seed = torch.tensor(1)
    with pytest.raises(ValueError, match="logvar must match mu"):
        op(good, torch.zeros(4, 2), None, seed, False, -math.inf, math.inf)
    with pytest.raises(ValueError, match="eps must match mu"):
        op(good, good, torch.zeros(4, 3, dtype=torch.float64), seed, False, -math.inf, math.inf)
    with pytest.raises(ValueError, match="mu must be a contiguous 2-D"):
        op(torch.zeros(3, 4).t(), good, None, seed, False, -math.inf, math.inf)
    backward = torch.ops.aefast.reparameterize_kl_backward
    with pytest.raises(ValueError, match="grad_kl must be contiguous"):
        backward(good, torch.zeros(5), good, good, None, seed, -math.inf, math.inf)
    with pytest.raises(ValueError, match="grad_z must match mu"):
        backward(torch.zeros(2, 2), torch.zeros(4), good, good, None, seed, -math.inf, math.inf)
    # One meta tensor among CPU ones sends the call to the ops' fake implementations, which would answer
    # with uninitialized tensors: they refuse mixed devices as the kernels' checks do.
    meta = good.to("meta")
    with pytest.raises(ValueError, match="^logvar is on meta but mu is on cpu$"):
        op(good, meta, None, seed, False, -math.inf, math.inf)
    with pytest.raises(ValueError, match="^seed is on meta but mu is on cpu$"):
        op(good, good, good, seed.to("meta"), False, -math.inf, math.inf)
    with pytest.raises(ValueError, match="^grad_kl is on cpu but grad_z is on meta$"):
        backward(meta, torch.zeros(4), good, good, None, seed, -math.inf, math.inf)
    z, kl = op(meta, meta, None, seed, False, -math.inf, math.inf)  # all on meta: the shapes alone
    assert (z.device.type, z.shape, kl.shape) == ("meta", (4, 3), (4,))
