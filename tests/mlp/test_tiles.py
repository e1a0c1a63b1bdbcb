"""The linear kernels' tiles: every tile a launcher may pick against the reference (in the interpreter),
the 64-bit in-tile offsets of very long rows, and the tuner that picks among the tiles on a GPU."""
import itertools

import pytest
import torch

from aefast import use_backend

# M = 129: 128-row tiles end in a partial tile of one row, 64-row tiles in one of one row after two
# full ones; K = 130 and N = 100: every edge (32, 64, 128) ends in a partial tile, in the reduced
# dimension as well.
ROWS, WIDTH_IN, WIDTH_OUT = 129, 130, 100


def float32_tolerance(reduced: int) -> float:
    """As tests/mlp/test_layers.py: float32 sums of ``reduced`` O(1) products added in another order."""
    return 1e-6 * max(reduced, 10)


def every_tile_shape(kind: str) -> list[tuple[int, int, int]]:
    from aefast.mlp.triton_kernels import LINEAR_TILES
    shapes = []
    for largest in itertools.chain.from_iterable(LINEAR_TILES[kind].values()):
        if largest not in shapes:
            shapes.append(largest)
    return shapes


def tile_choices() -> list[dict]:
    """Choices of (kind -> largest tile) that together cover every tile of every kernel."""
    from aefast.mlp.triton_kernels import LINEAR_TILES
    shapes = {kind: every_tile_shape(kind) for kind in LINEAR_TILES}
    count = max(len(listed) for listed in shapes.values())
    return [{kind: listed[min(index, len(listed) - 1)] for kind, listed in shapes.items()} for index in range(count)]


def run_ops(device="cpu", seed=5):
    """Forward (GELU, masked input), backward (with a loss scale) and the fused BCE loss of one layer:
    every linear kernel once. Returns every output, named, with the length of the sum behind it."""
    generator = torch.Generator().manual_seed(seed)
    x, weight, bias, grad_y, target = (tensor.to(device) for tensor in (
        torch.randn(ROWS, WIDTH_IN, generator=generator),
        torch.randn(WIDTH_OUT, WIDTH_IN, generator=generator) / WIDTH_IN ** 0.5,
        torch.randn(WIDTH_OUT, generator=generator),
        torch.randn(ROWS, WIDTH_OUT, generator=generator),
        torch.rand(ROWS, WIDTH_OUT, generator=generator)))
    seed_tensor = torch.tensor(11)
    y, z = torch.ops.aefast.fused_linear(x, weight, bias, "gelu", "mask", 0.25, seed_tensor)
    grad_x, grad_w, grad_b = torch.ops.aefast.fused_linear_backward(
        grad_y, x, weight, bias, y, z, "gelu", "mask", 0.25, seed_tensor, torch.tensor(0.5, device=device), True)
    loss, grad_z = torch.ops.aefast.fused_linear_loss(x, weight, bias, target, "sigmoid", "bce")
    return {"y": (y, WIDTH_IN), "z": (z, WIDTH_IN), "grad_x": (grad_x, WIDTH_OUT), "grad_w": (grad_w, ROWS),
            "grad_b": (grad_b, ROWS), "loss": (loss, WIDTH_IN), "grad_z": (grad_z, WIDTH_IN)}


def assert_matches_reference(got, device="cpu"):
    with use_backend("reference"):
        expected = run_ops(device)
    for name, (value, reduced) in got.items():
        torch.testing.assert_close(value, expected[name][0], atol=float32_tolerance(reduced), rtol=1e-5, msg=name)


@pytest.mark.parametrize("choice", tile_choices(), ids=lambda choice: "-".join(
    f"{kind}{'x'.join(map(str, shape))}" for kind, shape in choice.items()))
def test_every_tile_against_the_reference(triton_kernels, monkeypatch, choice):
    picked = []

    def pick(kind, operands, sizes, device, launch):
        picked.append(triton_kernels.fit_tiles(kind, choice[kind], sizes))
        return picked[-1]
    monkeypatch.setattr(triton_kernels, "_pick_tiles", pick)
    assert_matches_reference(run_ops())
    assert len(picked) == 4  # forward, grad_input, grad_weight, loss


@pytest.mark.gpu
@pytest.mark.parametrize("choice", tile_choices(), ids=lambda choice: "-".join(
    f"{kind}{'x'.join(map(str, shape))}" for kind, shape in choice.items()))
def test_every_tile_compiled_on_the_gpu_against_the_reference(monkeypatch, choice):
    """As above, compiled (IEEE float32 products on both sides)."""
    from aefast.mlp import triton_kernels

    monkeypatch.setattr(triton_kernels, "_pick_tiles",
                        lambda kind, operands, sizes, device, launch: triton_kernels.fit_tiles(kind, choice[kind], sizes))
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    with use_backend("triton"):
        got = run_ops("cuda")
    assert_matches_reference(got, "cuda")


@pytest.mark.gpu
def test_the_gpu_tunes_a_large_layer_once():
    from aefast.mlp import triton_kernels

    triton_kernels._tuned.clear()
    x = torch.randn(2**14, 784, device="cuda")
    weight, bias = torch.randn(256, 784, device="cuda") / 28, torch.randn(256, device="cuda")
    with use_backend("triton"):
        y, _ = torch.ops.aefast.fused_linear(x, weight, bias, "relu", "none", 0.0, torch.tensor(0))
    sizes = (2**14, 256, 784)
    (key, chosen), = triton_kernels._tuned.items()
    assert key[0] == "forward" and chosen in triton_kernels.linear_tiles("forward", key[1], sizes)
    torch.testing.assert_close(y, torch.relu(x @ weight.T + bias), atol=float32_tolerance(784), rtol=1e-5)


def test_long_rows_take_64_bit_offsets_inside_tiles(triton_kernels, monkeypatch):
    """Rows of 2^23 elements or more would overflow 32-bit offsets in a 256-row tile; the kernels then
    compute them in 64 bits. Here every row counts as long."""
    assert not triton_kernels._long_rows(2**23 - 1, 5) and triton_kernels._long_rows(5, 2**23)
    monkeypatch.setattr(triton_kernels, "LONG_ROW", 1)
    assert triton_kernels._long_rows(WIDTH_OUT, WIDTH_IN)
    assert_matches_reference(run_ops())


def test_the_tuner_times_each_tile_once_and_keeps_the_fastest(triton_kernels, monkeypatch):
    candidates = triton_kernels.linear_tiles("forward", "ieee", (ROWS, WIDTH_OUT, WIDTH_IN))
    assert len(candidates) == 3
    fastest = candidates[1]
    timed = []

    def fake_time(launch):
        launch()  # runs the kernel with the candidate's tiles; what ran is recorded by the spy below
        return 1.0 if timed[-1] == fastest else 2.0
    launches = []
    original = triton_kernels._linear_forward_kernel

    class Spy:
        def __getitem__(self, grid):
            def run(*args, **kwargs):
                tiles = triton_kernels.Tiles(kwargs["BLOCK_M"], kwargs["BLOCK_N"], kwargs["BLOCK_K"], kwargs["num_warps"])
                launches.append(tiles)
                timed.append(tiles)
                return original[grid](*args, **kwargs)
            return run
    monkeypatch.setattr(triton_kernels, "_linear_forward_kernel", Spy())
    monkeypatch.setattr(triton_kernels, "_time_launch", fake_time)
    monkeypatch.setattr(triton_kernels, "_tuning_on", lambda device: True)
    monkeypatch.setattr(triton_kernels, "TUNE_MIN_WORK", 0)
    monkeypatch.setattr(triton_kernels, "_tuned", {})
    x = torch.randn(ROWS, WIDTH_IN)
    weight, bias = torch.randn(WIDTH_OUT, WIDTH_IN), torch.randn(WIDTH_OUT)
    y, _ = triton_kernels.linear_forward(x, weight, bias, "relu", "none", 0.0, 0)
    assert launches == candidates + [fastest]  # each timed once, then the fastest runs
    torch.testing.assert_close(y, torch.relu(x @ weight.T + bias), atol=float32_tolerance(WIDTH_IN), rtol=1e-5)
    # The same problem, and one whose rows round up to the same power of two, reuse the choice untimed.
    launches.clear()
    triton_kernels.linear_forward(x, weight, bias, "relu", "none", 0.0, 0)
    triton_kernels.linear_forward(torch.randn(ROWS + 1, WIDTH_IN), weight, bias, "relu", "none", 0.0, 0)
    assert launches == [fastest, fastest]


def test_no_tuning_off_the_gpu_for_small_problems_during_capture_or_when_switched_off(triton_kernels, monkeypatch):
    def never(launch):
        raise AssertionError("timed")
    monkeypatch.setattr(triton_kernels, "_time_launch", never)
    sizes = (ROWS, WIDTH_OUT, WIDTH_IN)
    default = triton_kernels.linear_tiles("forward", "ieee", sizes)[0]
    # Off the GPU (the interpreter here), whatever the size.
    monkeypatch.setattr(triton_kernels, "TUNE_MIN_WORK", 0)
    assert triton_kernels._pick_tiles("forward", "ieee", sizes, torch.device("cpu"), never) == default
    # A problem under TUNE_MIN_WORK, where tuning would be on.
    monkeypatch.setattr(triton_kernels, "_tuning_on", lambda device: True)
    monkeypatch.setattr(triton_kernels, "TUNE_MIN_WORK", ROWS * WIDTH_OUT * WIDTH_IN + 1)
    assert triton_kernels._pick_tiles("forward", "ieee", sizes, torch.device("cpu"), never) == default
    # While a CUDA graph is captured, a problem not tuned yet takes the default, untimed.
    monkeypatch.setattr(triton_kernels, "TUNE_MIN_WORK", 0)
    monkeypatch.setattr(triton_kernels, "_capturing", lambda device: True)
    assert triton_kernels._pick_tiles("forward", "ieee", sizes, torch.device("cpu"), never) == default
    # AEFAST_TUNE=0 turns it off on a GPU too (checked before anything asks for the GPU).
    monkeypatch.undo()
    monkeypatch.setenv("AEFAST_TUNE", "0")
    assert triton_kernels._tuning_on(torch.device("cuda")) is False
    monkeypatch.setenv("AEFAST_TUNE", "1")
    assert triton_kernels._tuning_on(torch.device("cuda")) is True


def test_every_tile_fits_its_kernel_and_the_default_comes_first(triton_kernels):
    """Tiles are powers of two from 16 (tl.dot's least) and shrink to small problems; the default of each
    kernel is the first of its list for every kind of operands."""
    for kind, by_operands in triton_kernels.LINEAR_TILES.items():
        defaults = {listed[0] for listed in by_operands.values()}
        assert len(defaults) == 1, kind
        for largest in itertools.chain.from_iterable(by_operands.values()):
            assert all(edge >= 16 and edge & (edge - 1) == 0 for edge in largest)
        small = triton_kernels.linear_tiles(kind, "ieee", (3, 5, 7))
        assert small == [triton_kernels.Tiles(16, 16, 16, 4)]
