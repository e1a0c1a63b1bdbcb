"""The MLP kernels as the GPU gets them: compiled ahead of time for an H100/H200 (sm_90) with every
launch configuration the launchers may choose, on any machine (Triton's bundled ptxas runs without a GPU).
A 64 x 64 float32 tile in 4 warps once spilled 13 KiB per thread to local memory, which made the
narrow stack 40x slower than eager on an H200; these tests keep every kernel spill-free in every
configuration its launcher picks.

The compilation runs in a child process without TRITON_INTERPRET (the interpreter replaces the kernels
by Python functions that cannot be compiled)."""
import concurrent.futures
import itertools
import json
import os

import pytest
import torch

from tests.fake_gpu import H200_SHARED_BYTES
from tests.sm90 import CUOBJDUMP, compile_for_sm90, compiled_in_child

PRECISIONS = (("fp32", "ieee"), ("fp32", "tf32x3"), ("fp32", "tf32"), ("bf16", "tf32"))


# Parameters whose type does not follow the tensors' element type.
FIXED_TYPES = {"partial_ptr": "*fp32", "gw_ptr": "*fp32", "gb_ptr": "*fp32", "partials_ptr": "*fp32",
               "scratch_ptr": "*fp32", "scale_ptr": "*fp32", "seed": "i64", "param": "fp32", "inv_count": "fp32"}


def signature(kernel, element: str, constants: dict) -> dict:
    def kind(name):
        if name in FIXED_TYPES:
            return FIXED_TYPES[name]
        if name.endswith("_ptr"):
            return f"*{element}"
        return "i32"
    return {param.name: kind(param.name) for param in kernel.params if param.name not in constants}


def operands_of(element: str, precision: str) -> str:
    """The key of NARROW_ROWS and LINEAR_TILES for a case's element type and dot precision."""
    return "16-bit" if element == "bf16" else precision


# The narrow kernels' cases by direction: "forward" saves the hidden activations, "unsaved" is the
# forward that does not (inference, and training whose backward recomputes them: "recompute"); "loss"
# is the forward that ends in the loss (BCE, the heavier), "lossrecompute" its backward. Each backward
# also as "...nogx", for an input that needs no gradient (NEED_GX false: a model's first layer in
# training). Its registers do not follow from the other's: at width 64 in IEEE float32, 32 rows, triton
# 3.6 spilled 96 bytes without dX and none with it.
NARROW_DIRECTIONS = {"forward": "forward", "unsaved": "forward", "backward": "backward", "recompute": "recompute",
                     "loss": "forward", "lossrecompute": "recompute", "backwardnogx": "backward",
                     "recomputenogx": "recompute", "lossrecomputenogx": "recompute"}


def has_tile(direction, element, precision, width):
    """Whether NARROW_ROWS gives the case rows: the recomputing backward has none where it spilled."""
    from aefast.mlp import triton_kernels

    key = (operands_of(element, precision), NARROW_DIRECTIONS[direction])
    return triton_kernels.NARROW_ROWS[key][width] is not None


CASES = [(direction, precision, width)
         for direction, precision, width in itertools.product(NARROW_DIRECTIONS, PRECISIONS, (16, 32, 64, 128))
         if has_tile(direction, *precision, width)]


def narrow_case(direction, element, precision, width):
    from aefast.mlp import triton_kernels

    block_d, block_m, warps = triton_kernels._narrow_blocks([width] * 5, 2**20, operands_of(element, precision),
                                                            NARROW_DIRECTIONS[direction])
    has_loss = direction.startswith("loss")
    constants = dict(triton_kernels.narrow_constants((width,) * 5), ACT=1, LAST_ACT=4 if has_loss else 0,
                     HAS_BIAS=True, HAS_LOSS=has_loss, LOSS=1 if has_loss else 0, PRECISION=precision, UPCAST=False,
                     BLOCK_M=block_m, BLOCK_D=block_d)
    stages = triton_kernels.DEFAULT_STAGES
    if direction in ("forward", "unsaved", "loss"):
        kernel, constants["SAVE"] = triton_kernels._narrow_forward_kernel, direction == "forward"
        constants["SPLIT_DOTS"] = triton_kernels.narrow_dots_in_quarters(precision, block_d)
    else:
        kernel, constants["NEED_GX"] = triton_kernels._narrow_backward_kernel, not direction.endswith("nogx")
        constants["CHUNK_BLOCKS"] = triton_kernels._narrow_backward_grid(2**20, block_m, torch.device("cpu"))[0]
        constants["SPLIT_PASSES"] = block_d > triton_kernels.NARROW_ONE_PASS_WIDTH
        constants["RECOMPUTE"], constants["ACTS_PER_ROW"] = "recompute" in direction, 3 * width
        constants["SPLIT_DOTS"] = triton_kernels.narrow_dots_in_quarters(precision, block_d)
        stages = triton_kernels.narrow_backward_stages(operands_of(element, precision), NARROW_DIRECTIONS[direction],
                                                       block_d)
    return kernel, constants, warps, stages


# The autoencoder's layers 784 -> 256 and (the loss) 256 -> 784 at batch 2^14: every tile reaches its
# largest edges. The heaviest variants: GELU (it saves z), masked denoising (the noise regenerated in
# the loads), the loss scale, BCE on a sigmoid output. (Gaussian corruption adds a 32-byte local array
# of its Box-Muller, not a spill.)
LINEAR_SIZES = {"forward": (2**14, 256, 784), "grad_input": (2**14, 256, 784), "grad_input_dz": (2**14, 256, 784),
                "grad_weight": (2**14, 256, 784), "loss": (2**14, 784, 256)}
LINEAR_VARIANTS = {"forward": dict(ACT=5, CORRUPT=1, SAVE_Z=True, HAS_BIAS=True),
                   "grad_input": dict(ACT=5, CORRUPT=1, HAS_SCALE=True, STORE_GZ=False),
                   "grad_input_dz": dict(ACT=5, CORRUPT=0, HAS_SCALE=True, STORE_GZ=True),
                   "grad_weight": dict(ACT=5, CORRUPT=1, HAS_SCALE=True, HAS_BIAS=True),
                   "loss": dict(OUT_ACT=4, LOSS=1, HAS_BIAS=True)}


def linear_case(kind, element, precision, index):
    """Kernel ``kind`` with its tile number ``index`` (in LINEAR_TILES) on LINEAR_SIZES."""
    from aefast.mlp import triton_kernels as k

    tiles = k.fit_tiles(kind, k.LINEAR_TILES[kind][operands_of(element, precision)][index], LINEAR_SIZES[kind])
    kernel = {"forward": k._linear_forward_kernel, "grad_input": k._linear_grad_input_kernel,
              "grad_input_dz": k._linear_grad_input_kernel,
              "grad_weight": k._linear_grad_weight_kernel, "loss": k._linear_loss_kernel}[kind]
    constants = dict(LINEAR_VARIANTS[kind], PRECISION=precision, UPCAST=False, LONG_ROWS=False,
                     BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k)
    return kernel, constants, tiles.warps


def grads_case(element, precision):
    """_linear_grads_kernel, a layer's dX and dW in one launch, with each kernel's default tiles on
    LINEAR_SIZES (the launchers' pick off a GPU and at the benchmarks' sizes there, untuned) and both
    kernels' heaviest variants; in the more warps of the two, as the launcher runs it."""
    from aefast.mlp import triton_kernels as k

    operands = operands_of(element, precision)
    dx = k.fit_tiles("grad_input", k.LINEAR_TILES["grad_input"][operands][0], LINEAR_SIZES["grad_input"])
    dw = k.fit_tiles("grad_weight", k.LINEAR_TILES["grad_weight"][operands][0], LINEAR_SIZES["grad_weight"])
    constants = dict(ACT=5, CORRUPT=1, HAS_SCALE=True, HAS_BIAS=True, PRECISION=precision, UPCAST=False,
                     LONG_ROWS=False, X_BLOCK_M=dx.block_m, X_BLOCK_N=dx.block_n, X_BLOCK_K=dx.block_k,
                     W_BLOCK_M=dw.block_m, W_BLOCK_N=dw.block_n, W_BLOCK_K=dw.block_k)
    return k._linear_grads_kernel, constants, max(dx.warps, dw.warps)


GRADS_CASES = [f"grads-{element}-{precision}" for element, precision in PRECISIONS]


def linear_cases() -> list[str]:
    """Every tile of every linear kernel, per precision: "linear-<kind>-<element>-<precision>-<index>"."""
    from aefast.mlp.triton_kernels import LINEAR_TILES

    return [f"linear-{kind}-{element}-{precision}-{index}" for element, precision in PRECISIONS
            for kind, by_operands in LINEAR_TILES.items()
            for index in range(len(by_operands[operands_of(element, precision)]))]


# The weight gradients' split sums, in the weights' dtypes (the partial sums are float32), one gradient a
# launch (a layer's own) and SUM_GROUPS (a chain's backward).
SUM_SPLITS_CASES = ["sum-splits-fp32-1", "sum-splits-bf16-1", "sum-splits-fp32-4", "sum-splits-bf16-4"]


def sum_splits_case(element: str, groups: int) -> dict:
    from aefast.mlp import triton_kernels as k

    signature, divisible = {}, []
    for group in range(k.SUM_GROUPS):
        signature.update({f"partials{group}": "*fp32", f"gw{group}": f"*{element}", f"gb{group}": f"*{element}",
                          f"splits{group}": "i32", f"split_stride{group}": "i32", f"weight_size{group}": "i32",
                          f"total_size{group}": "i32"})
        divisible += [f"split_stride{group}", f"weight_size{group}", f"total_size{group}"]
        if group < k.SUM_GROUPS - 1:
            signature[f"end{group}"] = "i32"
    return compile_for_sm90(k._sum_splits_kernel, signature, {"GROUPS": groups, "BLOCK": k.SUM_SPLITS_BLOCK}, 4,
                            divisible=tuple(divisible))


def compile_case(case: str) -> dict:
    from aefast.mlp import triton_kernels

    if case in SUM_SPLITS_CASES:
        element, groups = case.removeprefix("sum-splits-").split("-")
        return sum_splits_case(element, int(groups))
    one_row = case.startswith("one-row-")
    case = case.removeprefix("one-row-")
    if case.startswith("grads-"):
        _, element, precision = case.split("-")
        kernel, constants, warps = grads_case(element, precision)
        stages = triton_kernels.DEFAULT_STAGES
    elif case.startswith("linear-"):
        _, kind, element, precision, index = case.split("-")
        kernel, constants, warps = linear_case(kind, element, precision, int(index))
        stages = triton_kernels.DEFAULT_STAGES  # the linear launchers leave Triton's default
    else:
        direction, element, precision, width = case.split("-")
        kernel, constants, warps, stages = narrow_case(direction, element, precision, int(width))
    if one_row:
        constants["M"] = 1  # Triton makes an integer argument of 1 a constant: a batch of one row
    # Every other size of these cases (2^20 rows, 2^14, 256, 784) is a multiple of 16, as Triton sees it.
    return compile_for_sm90(kernel, signature(kernel, element, constants), constants, warps, stages,
                            divisible=("M", "N", "K"))


# A batch of one row compiles a kernel of its own, with M a constant: a kernel that treats M as a
# tensor (M.to(...)) compiles for every other batch and fails there. The interpreter does not see it.
ONE_ROW_CASES = ["one-row-forward-fp32-tf32-64", "one-row-backward-fp32-tf32-64", "one-row-backward-fp32-tf32-128",
                 "one-row-recompute-fp32-tf32-64",
                 *(f"one-row-linear-{kind}-fp32-tf32-0" for kind in ("forward", "grad_input", "grad_weight", "loss")),
                 "one-row-grads-fp32-tf32"]


def compile_cases() -> dict:
    """{case id: compile_for_sm90's result} for every case, compiled by one worker per core (in a process
    that must not interpret Triton)."""
    cases = [f"{direction}-{element}-{precision}-{width}" for direction, (element, precision), width in CASES]
    cases += linear_cases() + GRADS_CASES + ONE_ROW_CASES + SUM_SPLITS_CASES
    with concurrent.futures.ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        return dict(zip(cases, pool.map(compile_case, cases)))


@pytest.fixture(scope="module")
def compiled():
    return compiled_in_child(__file__)


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="Triton's CUDA tools are not installed")
@pytest.mark.parametrize("direction,precision,width", CASES, ids=lambda value: "-".join(value) if isinstance(value, tuple) else str(value))
def test_narrow_kernels_compile_for_sm90_without_spills(compiled, direction, precision, width):
    element, dot_precision = precision
    result = compiled[f"{direction}-{element}-{dot_precision}-{width}"]
    assert result["stack"] == 0
    assert result["shared"] <= H200_SHARED_BYTES  # Triton refuses a launch past it
    # The tensor cores are the point of every precision but IEEE float32 (Triton has no FMA fallback
    # for "tf32x3" that it would take silently, but a version could).
    assert result["tensor_cores"] == (dot_precision != "ieee" or element != "fp32")


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="Triton's CUDA tools are not installed")
@pytest.mark.parametrize("case", linear_cases())
def test_every_linear_tile_compiles_for_sm90_without_spills(compiled, case):
    assert compiled[case]["stack"] == 0
    assert compiled[case]["shared"] <= H200_SHARED_BYTES
    assert compiled[case]["tensor_cores"] == ("-fp32-ieee-" not in case)


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="Triton's CUDA tools are not installed")
@pytest.mark.parametrize("case", GRADS_CASES)
def test_a_layers_gradients_in_one_launch_compile_for_sm90_without_spills(compiled, case):
    assert compiled[case]["stack"] == 0
    assert compiled[case]["shared"] <= H200_SHARED_BYTES
    assert compiled[case]["tensor_cores"] == ("-fp32-ieee" not in case)


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="Triton's CUDA tools are not installed")
@pytest.mark.parametrize("case", ONE_ROW_CASES)
def test_kernels_compile_for_a_batch_of_one_row(compiled, case):
    assert compiled[case]["registers"] > 0


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="Triton's CUDA tools are not installed")
@pytest.mark.parametrize("case", SUM_SPLITS_CASES)
def test_the_split_sums_compile_without_spills(compiled, case):
    assert compiled[case]["stack"] == 0 and compiled[case]["registers"] > 0


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="Triton's CUDA tools are not installed")
def test_ieee_narrow_forward_at_width_64_leaves_room_for_two_programs_per_sm(compiled):
    """NARROW_ROWS gives this tile 32 rows where 64 compile, for two programs of 8 warps per SM: each
    thread may take at most 65536 / (2 * 256) = 128 of the SM's registers."""
    for direction in ("forward", "unsaved"):
        assert compiled[f"{direction}-fp32-ieee-64"]["registers"] <= 128, direction


if __name__ == "__main__":
    print(json.dumps(compile_cases()))
