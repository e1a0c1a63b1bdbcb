"""The Triton Philox helpers shared by the VAE and MLP kernels: the reference stream (aefast/_philox.py),
one normal or four per offset, at offsets past 2^32, where a 32-bit offset would wrap around to the first numbers; and the kernels
that take a seed, which must not compile a variant per seed."""
import importlib

import pytest
import torch

from aefast import _backends
from aefast._philox import philox_normal, philox_normal4, philox_uniform

if _backends.can_run("triton", torch.device("cpu")) is not True and not torch.cuda.is_available():
    pytest.skip("triton cannot run here", allow_module_level=True)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from aefast import _triton_random  # noqa: E402


@triton.jit
def _draw(out_normal, out_uniform, seed, start, COUNT: tl.constexpr):
    offsets = start + tl.arange(0, COUNT).to(tl.int64)
    tl.store(out_normal + tl.arange(0, COUNT), _triton_random.philox_normal(seed, offsets))
    tl.store(out_uniform + tl.arange(0, COUNT), _triton_random.philox_uniform(seed, offsets))


@pytest.mark.parametrize("start", [0, 2**31 - 8, 2**32 - 8, 2**40 + 3])
def test_triton_philox_matches_the_reference_past_2_to_the_32(start):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    normal, uniform = torch.empty(16, device=device), torch.empty(16, device=device)
    _draw[(1,)](normal, uniform, 7, start, COUNT=16)
    offsets = torch.arange(start, start + 16)
    torch.testing.assert_close(normal.cpu(), philox_normal(7, offsets), atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(uniform.cpu(), philox_uniform(7, offsets), atol=1e-7, rtol=0)
    if start >= 2**32:
        assert not torch.allclose(normal.cpu(), philox_normal(7, offsets % 2**32))


@triton.jit
def _draw4(out, seed, start, COUNT: tl.constexpr, TRITONS_OWN: tl.constexpr):
    offsets = start + tl.arange(0, COUNT).to(tl.int64)
    if TRITONS_OWN:
        n0, n1, n2, n3 = tl.randn4x(seed, offsets.to(tl.uint32))
    else:
        n0, n1, n2, n3 = _triton_random.philox_normal4(seed, offsets)
    rows = tl.arange(0, COUNT) * 4
    tl.store(out + rows, n0)
    tl.store(out + rows + 1, n1)
    tl.store(out + rows + 2, n2)
    tl.store(out + rows + 3, n3)


@pytest.mark.parametrize("start", [0, 2**32 - 8, 2**40 + 3])
def test_triton_four_normals_match_the_reference_and_tl_randn4x(start):
    """philox_normal4, the VAE kernels' noise: aefast/_philox.py's formulas past 2^32 too, and below it
    Triton's own tl.randn4x (the stream is Triton's, by its own Box-Muller)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ours, tritons = torch.empty(16, 4, device=device), torch.empty(16, 4, device=device)
    _draw4[(1,)](ours, 7, start, COUNT=16, TRITONS_OWN=False)
    expected = philox_normal4(7, torch.arange(start, start + 16))
    torch.testing.assert_close(ours.cpu(), expected, atol=2e-6, rtol=2e-6)
    if start + 16 <= 2**32:
        _draw4[(1,)](tritons, 7, start, COUNT=16, TRITONS_OWN=True)
        torch.testing.assert_close(tritons.cpu(), expected, atol=2e-6, rtol=2e-6)
    else:
        assert not torch.allclose(ours.cpu(), philox_normal4(7, torch.arange(start, start + 16) % 2**32))


@pytest.mark.parametrize("seed", [0, 7, 2**40 + 3, 2**63 - 25])
@pytest.mark.parametrize("first", [0, 3, 2**31 + 7])
def test_fill_writes_the_reference_stream(seed, first):
    """_triton_random.fill, the layers' noise on a GPU: the formulas' uniforms exactly and their normals
    within 2e-6, from offset ``first`` (a block of rows inside a larger input, past 2^31 too), for counts
    that end inside a program's block, on a block's edge and past several; and nothing past the tensor's
    end (it is a slice of a larger buffer here, whose tail must stay as it was)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for count in (0, 1, 1023, 1024, 2500):
        offsets = torch.arange(first, first + count)
        buffers = [torch.full((count + 64,), -7.0, device=device) for _ in range(2)]
        uniform, normal = (buffer[:count] for buffer in buffers)
        _triton_random.fill(uniform, "uniform", seed, first)
        _triton_random.fill(normal, "normal", seed, first)
        assert all(bool((buffer[count:] == -7.0).all()) for buffer in buffers)
        assert uniform.shape == normal.shape == (count,) and uniform.device.type == device
        assert torch.equal(uniform.cpu(), philox_uniform(seed, offsets))
        torch.testing.assert_close(normal.cpu(), philox_normal(seed, offsets), atol=2e-6, rtol=2e-6)


def _kernels_taking_a_seed():
    for name in ("aefast.mlp.triton_kernels", "aefast.vae.triton_kernels", "aefast.willshaw.triton_kernels",
                 "aefast._triton_random"):
        module = importlib.import_module(name)
        for attribute, value in vars(module).items():
            if attribute.endswith("_kernel") and "seed" in getattr(value, "arg_names", ()):
                yield f"{name}.{attribute}", value


def _unspecialized(kernel) -> set:
    """The parameters Triton compiles no variants for: a JITFunction's params, or the interpreter's
    record of the jit decorator's arguments."""
    if hasattr(kernel, "params"):
        return {param.name for param in kernel.params if param.do_not_specialize}
    return {kernel.arg_names[p] if isinstance(p, int) else p for p in kernel.kwargs.get("do_not_specialize", ())}


def test_no_kernel_compiles_a_variant_per_seed():
    """A fresh seed per step (the layers' and reparameterize_kl's default) must not pick among compiled
    variants: Triton specializes integers on divisibility by 16 unless told not to."""
    kernels = dict(_kernels_taking_a_seed())
    assert len(kernels) == 7, sorted(kernels)  # the MLP's four linear kernels, the VAE's two, the fill
    assert {name for name, kernel in kernels.items() if "seed" not in _unspecialized(kernel)} == set()
