"""Every Triton kernel through Triton's real launch path, as a GPU gets it: aefast's ops on the triton
backend on a fake sm_90 GPU (tests/fake_gpu.py) that compiles each launch and runs none. The interpreter,
which runs the kernels on this CPU, skips all of it (binding, specialization, compiling, the options a
launch passes); the sm_90 compile tests take signatures written by hand. Here the launchers' own
arguments reach the compiler, Triton refuses what an H200 would (shared memory, threads for the
registers taken), the fake GPU a grid past CUDA's limits, and the record says what each compiled kernel
was given and took: every launch asks for FMA contraction, which Triton 3.10 stops giving by default,
and at the benchmarks' shapes none spills (the cases written by hand had missed two that did)."""
import json
import sys
import warnings

import pytest
import triton

from tests.fake_gpu import CUOBJDUMP
from tests.sm90 import compiled_in_child

# Every @triton.jit kernel aefast launches, by module.
KERNELS = {
    "aefast.mlp.triton_kernels": ["_linear_forward_kernel", "_linear_grad_input_kernel", "_linear_grad_weight_kernel",
                                  "_linear_grads_kernel", "_sum_splits_kernel", "_linear_loss_kernel", "_narrow_forward_kernel",
                                  "_narrow_backward_kernel"],
    "aefast.vae.triton_kernels": ["_forward_kernel", "_backward_kernel"],
    "aefast._triton_random": ["fill_kernel"],
    "aefast.willshaw.triton_kernels": ["_store_kernel", "_store_rows_kernel", "_and_kernel", "_extract_kernel",
                                       "_unpack_kernel", "_sums_kernel", "_count_ones_kernel", "_check_rows_kernel",
                                       "_check_short_rows_kernel", "_pattern_verdict_kernel"],
}


@pytest.fixture(scope="module")
def record():
    return compiled_in_child(__file__)


@pytest.fixture(scope="module")
def record_at_scale():
    return compiled_in_child(__file__, "scale")


def test_every_kernel_went_through_the_launch_path(record):
    expected = sorted(name for names in KERNELS.values() for name in names)
    assert sorted(record["launches"]) == expected


def test_the_list_holds_every_kernel_of_its_module():
    """KERNELS names each module's kernels (jitted functions named *_kernel, as aefast names the ones it
    launches), all of them: a kernel added to a module must be launched above too."""
    import importlib

    from triton.runtime.jit import KernelInterface  # jitted and interpreted kernels alike

    for module_name, names in KERNELS.items():
        module = importlib.import_module(module_name)
        kernels = {name for name, value in vars(module).items()
                   if name.endswith("_kernel") and isinstance(value, KernelInterface)}
        assert kernels == set(names), module_name


def test_every_compile_asked_for_fma_contraction(record):
    assert record["fp_fusion"] == {name: [True] for name in record["launches"]}


def test_no_launch_left_triton_to_warn(record):
    assert record["warnings"] == []


def test_the_benchmarks_and_the_seeds_sizes_launch_within_cudas_limits(record_at_scale):
    """The benchmarks' shapes on an H200 (every candidate tile its tuner times, both ways of taking a weight
    gradient) and the seeds' n = 10^6 memory: each launch's grid within CUDA's limits (the fake GPU
    refuses one past them, as a GPU does), each kernel variant compiled for sm_90 in the shared memory an
    H200 has, asking for FMA contraction."""
    assert set(record_at_scale["launches"]) >= {"_linear_forward_kernel", "_linear_loss_kernel",
                                                "_linear_grad_input_kernel", "_linear_grad_weight_kernel",
                                                "_linear_grads_kernel",
                                                "_narrow_forward_kernel", "_narrow_backward_kernel", "_forward_kernel",
                                                "_backward_kernel", "_store_rows_kernel", "_and_kernel",
                                                "_sums_kernel", "_unpack_kernel"}
    assert record_at_scale["fp_fusion"] == {name: [True] for name in record_at_scale["launches"]}
    assert record_at_scale["warnings"] == []


# Per thread, the stack a kernel may take: none (a spill would show as stack), but the noise's normals,
# whose cosine reduction takes libdevice's 32-byte local array (as tests/vae/test_compiled_kernels.py).
STACK_ALLOWED = {"_forward_kernel": 32, "_backward_kernel": 32, "fill_kernel": 32}


def _spilled(record) -> dict:
    """{kernel name: its most stack a thread} where that passes STACK_ALLOWED."""
    return {name: size for name, size in record["stack_bytes"].items() if size > STACK_ALLOWED.get(name, 0)}


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="Triton's CUDA tools are not installed")
def test_no_kernel_the_benchmarks_launch_spills(record_at_scale):
    """The variants the launchers compile at the benchmarks' shapes, not a list of them written by hand: no
    stack but the noise's. (At the small run's shapes the linear tiles shrink to the layers' widths, and
    with triton 3.9 some of those spill a few bytes a thread: mlp/triton_kernels.py, by LINEAR_TILES.)"""
    assert record_at_scale["stack_bytes"] and _spilled(record_at_scale) == {}


# At the small run's sizes the linear tiles shrink to the layers' widths, and a few of those spill a few
# bytes a thread (mlp/triton_kernels.py, by LINEAR_TILES): with triton 3.6 IEEE float32's dW at sizes of
# 100 with a ReLU, 8 bytes; with 3.9 a few more. The narrow kernels launch none that spills.
SMALL_RUN_LINEAR_STACK = 16
LINEAR_KERNELS = ("_linear_forward_kernel", "_linear_grad_input_kernel", "_linear_grad_weight_kernel",
                  "_linear_grads_kernel", "_linear_loss_kernel")


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="Triton's CUDA tools are not installed")
def test_no_kernel_the_small_run_launches_spills_but_a_few_bytes_of_a_linear_tile(record):
    spilled = _spilled(record)
    assert record["stack_bytes"] and {name: size for name, size in spilled.items()
                                      if name not in LINEAR_KERNELS or size > SMALL_RUN_LINEAR_STACK} == {}


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="Triton's CUDA tools are not installed")
@pytest.mark.skipif(not triton.__version__.startswith("3.6."), reason="which variants spill depends on the version")
def test_a_narrow_variant_that_spills_is_compiled_and_never_launched(record):
    """With triton 3.6 the 128-wide narrow backward of 17-100-100-17 spills (450-1100 bytes a thread): the
    launcher compiled it, saw the spill, and ran the layers one by one instead (the small run's no-spill
    check above holds the launched variants)."""
    refused = [key for key in record["refused"] if key.startswith("_narrow_backward_kernel")]
    assert any("'DIMS': (17, 100, 100, 17)" in key for key in refused), record["refused"]


def test_every_kernel_launches_again_through_the_shorter_path(record):
    """The small run runs three times: every kernel's launches the last time skip Triton's launch path
    (aefast._triton_launch; the autotuned Willshaw kernels once their autotuner has chosen), each with
    the arguments its compiled kernel takes (the fake GPU checks them)."""
    assert record["direct"] == sorted(name for names in KERNELS.values() for name in names)


def test_the_fake_gpu_refuses_a_grid_past_cudas_limits(record):
    assert record["refused_grid"].startswith("_count_ones_kernel: a grid of (1, 65536, 1) programs passes")


def _workload():
    """Each op of each component on the triton backend, small, in the variants that compile other kernels."""
    import torch

    import aefast
    from aefast import _triton_random
    from aefast.mlp import fp32_precision as mlp_precision
    from aefast.mlp import triton_kernels as mlp_kernels
    from aefast.nn import FusedAutoencoder, FusedMLP
    from aefast.willshaw import triton_kernels as willshaw_kernels

    torch.manual_seed(0)
    with aefast.use_backend("triton"):
        # Wide layers one by one (the batch split over the weight gradient's programs, then added), the
        # loss fused into the last, a masked corruption; then dZ written beside dX for a matmul's dW.
        model = FusedAutoencoder([150, 24, 8], output_activation="sigmoid")
        x = torch.rand(300, 150)
        params = list(model.parameters())
        torch.autograd.grad(model.loss(x, corruption=("mask", 0.25), seed=3), params)
        with torch.no_grad():
            model(x)
        previous, mlp_kernels.WEIGHT_GRAD = mlp_kernels.WEIGHT_GRAD, "matmul"
        torch.autograd.grad(model.loss(x), params)
        mlp_kernels.WEIGHT_GRAD = previous
        # A narrow stretch: forward alone, and its fused loss with the backward that recomputes.
        stack = FusedMLP([32, 32, 32, 32])
        rows = torch.randn(100, 32)
        with torch.no_grad():
            stack(rows)
        torch.autograd.grad(stack.loss(rows, torch.randn(100, 32)), list(stack.parameters()))
        # Stretches whose 128-wide tiles spill with triton 3.6 (rows not a multiple of 16 bytes wide): the
        # launchers compile each variant first and run the layers one by one where it spills (bfloat16,
        # 3xTF32 and IEEE float32 here; docs/gpu_notes.md has a wider sweep).
        for dtype, precision in ((torch.bfloat16, "torch"), (torch.float32, "tf32x3"), (torch.float32, "ieee")):
            with mlp_precision(precision):
                for dims in ([17, 100, 100, 17], [128, 100, 17]):
                    mixed = FusedMLP(dims).to(dtype)
                    rows = torch.randn(100, dims[0], dtype=dtype)
                    torch.autograd.grad(mixed.loss(rows, torch.randn(100, dims[-1], dtype=dtype)),
                                        list(mixed.parameters()))
                    torch.autograd.grad(mixed(rows.requires_grad_()).sum(), [rows, *mixed.parameters()])
        # reparameterize_kl with its noise generated, and the noise fill alone.
        mu, logvar = torch.randn(5, 7, requires_grad=True), torch.randn(5, 7, requires_grad=True)
        z, kl = aefast.reparameterize_kl(mu, logvar, seed=1)
        torch.autograd.grad((z.sum() + kl.sum()), (mu, logvar))
        _triton_random.fill(torch.empty(100), "normal", 7)
    # Willshaw's launchers, called as its ops call them; the answers' sizes are given, not read from
    # the kernels' outputs (which this GPU never writes).
    n = 200
    matrix = torch.zeros(n, 4, dtype=torch.int64)
    x_values, x_offsets = _rows([[1, 5, 9], [2, 7, 150]])
    for order in ("pairs", "rows"):
        previous, willshaw_kernels.STORE_ORDER = willshaw_kernels.STORE_ORDER, order
        willshaw_kernels.store(matrix, n, x_values, x_offsets, x_values, x_offsets)
        willshaw_kernels.STORE_ORDER = previous
    willshaw_kernels.sums(matrix, n, x_values, x_offsets)
    willshaw_kernels._sums(matrix, n, x_values, x_offsets, 2)
    words, counts = willshaw_kernels._and(matrix, x_values, x_offsets)
    willshaw_kernels._unpack(words, counts, n)
    willshaw_kernels._extract(words, counts, torch.tensor([1, 2]), 2)
    willshaw_kernels.row_flags(x_values, x_offsets, n)
    long_values, long_offsets = _rows([list(range(willshaw_kernels.CHECK_BLOCK + 1))])
    willshaw_kernels.row_flags(long_values, long_offsets, 10 * n)
    willshaw_kernels.pattern_verdict(x_values, x_offsets, n)
    willshaw_kernels.count_ones(matrix)


def _count_direct_launches():
    """{kernel name: its launches through _triton_launch's shorter path}, counted from now on."""
    import collections

    from aefast import _triton_launch

    direct = collections.Counter()
    keep = _triton_launch._variant

    def counted_variant(kernel, compiled, positional, kwargs):
        variant = keep(kernel, compiled, positional, kwargs)
        if variant is None:
            return None

        def launcher(*args):
            direct[kernel.__name__] += 1
            return variant.launcher(*args)
        return variant._replace(launcher=launcher)
    _triton_launch._variant = counted_variant
    return direct


def _refused_grid() -> str:
    """What the fake GPU says of a launch one program past CUDA's grid limit along y."""
    import torch

    from aefast._backends import TRITON_LAUNCH
    from aefast.willshaw import triton_kernels as willshaw_kernels

    words, partial = torch.zeros(8, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)
    try:
        willshaw_kernels._count_ones_kernel[(1, 2**16, 1)](words, 8, partial, BLOCK=willshaw_kernels.COUNT_WORDS,
                                                             **TRITON_LAUNCH)
    except RuntimeError as error:
        return str(error)
    return "launched"


def _workload_at_scale():
    """The shapes bench_mlp.py and bench_vae.py time on a GPU, in every precision they time (float32 as
    IEEE and as 3xTF32, bfloat16); then Willshaw's launchers on the seeds' n = 10^6 memory (M = 18).
    Tensors are torch.empty, never written: the kernels do not run, so no memory is touched."""
    import torch

    import aefast
    from aefast.mlp import fp32_precision
    from aefast.nn import FusedAutoencoder, FusedMLP
    from aefast.willshaw import triton_kernels as willshaw_kernels

    with aefast.use_backend("triton"):
        for dtype, precision in ((torch.float32, "torch"), (torch.float32, "tf32x3"), (torch.bfloat16, "torch")):
            with fp32_precision(precision):
                model = FusedAutoencoder([784, 256, 32], output_activation="sigmoid").to(dtype)
                x = torch.empty(2**14, 784, dtype=dtype)
                torch.autograd.grad(model.loss(x), list(model.parameters()))
                stack = FusedMLP([64, 64, 64, 64, 64]).to(dtype)
                rows = torch.empty(2**20, 64, dtype=dtype)
                torch.autograd.grad(stack.loss(rows, rows), list(stack.parameters()))
                with torch.no_grad():
                    model(x)
                    stack(rows)
        mu = torch.empty(2**20, 32, requires_grad=True)
        z, kl = aefast.reparameterize_kl(mu, mu, seed=1)
        torch.autograd.grad(z.sum() + kl.sum(), mu)
    n, ones, cues = 10**6, 18, 4096
    words = (n + 63) // 64
    matrix = torch.empty(1, words, dtype=torch.int64).expand(n, words)  # 125 GB as the kernels address it
    offsets = torch.arange(0, (cues + 1) * ones, ones, dtype=torch.int64)
    values = torch.arange(cues * ones, dtype=torch.int64) * 7 % n
    willshaw_kernels.store(matrix, n, values, offsets, values, offsets)
    willshaw_kernels._sums(matrix, n, values[:ones], offsets[:2], ones)
    answer_words, counts = willshaw_kernels._and(matrix, values, offsets)
    willshaw_kernels._unpack(answer_words[:64], counts[:64], n)


def _rows(rows):
    import torch

    values = torch.tensor([value for row in rows for value in row], dtype=torch.int64)
    offsets = torch.tensor([0] + [len(row) for row in rows], dtype=torch.int64).cumsum(0)
    return values, offsets


if __name__ == "__main__":
    from tests import fake_gpu

    fake = fake_gpu.install_for_aefast()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if sys.argv[1:] == ["scale"]:
            _workload_at_scale()
            checks = {}
        else:
            direct = _count_direct_launches()
            for _ in range(3):  # the third time every key has been met through Triton's path (the autotuned
                _workload()     # Willshaw kernels' after their autotuner's launch): all take the shorter one
            checks = {"refused_grid": _refused_grid(),  # after the record's kernels: it launches none
                      "direct": sorted(direct)}
    refused = sorted(key for key, variant in fake.variants.items() if variant.stack_bytes and not variant.launches)
    print(json.dumps({**checks, "launches": dict(fake.launches), "refused": refused,
                      "fp_fusion": fake.fp_fusion(), "shared_bytes": fake.most("shared_bytes"),
                      "registers": fake.most("registers"), "stack_bytes": fake.most("stack_bytes"),
                      "warnings": [str(w.message) for w in caught if "triton" in w.filename.replace("\\", "/")]}))
