"""The weight gradients' split sums (mlp/triton_kernels.py, in the interpreter): one launch of
_sum_splits_kernel adds up to SUM_GROUPS gradients' float32 partial sums, and a chain's backward gathers
its layers' and adds them after its last layer instead of one launch per layer. The sums are compared
bit for bit with the same float32 additions in the same order (split 0 first), then the cast."""
import pytest
import torch

from aefast.mlp import layers as mlp_layers
from aefast.nn import FusedMLP
from tests.mlp.conftest import count_launches


def _counted_sums(monkeypatch, module):
    return count_launches(monkeypatch, module, "_sum_splits_kernel")["_sum_splits_kernel"]


def _split_sum(module, generator, splits: int, weight_size: int, bias_size: int, dtype: torch.dtype):
    """A SplitSum of random partials whose gradients hold NaN until written (so a wait shows)."""
    stride = weight_size + bias_size + 3  # rows longer than they are read, as a narrow stretch's are not
    partials = torch.randn(splits, stride, generator=generator)
    grad_w = torch.full((weight_size,), float("nan"), dtype=dtype)
    grad_b = torch.full((bias_size,), float("nan"), dtype=dtype) if bias_size else grad_w
    return module.SplitSum(partials, grad_w, grad_b, splits, stride, weight_size, weight_size + bias_size)


def _expected(split_sum) -> tuple[torch.Tensor, torch.Tensor]:
    total = torch.zeros(split_sum.total_size)
    for row in split_sum.partials[:, :split_sum.total_size]:  # float32, split 0 first, as the kernel adds
        total += row
    total = total.to(split_sum.grad_w.dtype)
    return total[:split_sum.weight_size], total[split_sum.weight_size:]


@pytest.mark.parametrize("count", [1, 3, 4, 5, 9])
def test_gathered_split_sums_add_each_gradient_four_to_a_launch(triton_kernels, monkeypatch, count):
    """Gradients of odd sizes spanning one to three of a program's blocks, with and without biases, in
    float32 and bfloat16, one to five splits: none written inside the block, each its own sum after it."""
    counted = _counted_sums(monkeypatch, triton_kernels)
    generator = torch.Generator().manual_seed(count)
    sums = [_split_sum(triton_kernels, generator, splits=1 + index % 5,
                       weight_size=(100, 1025, 2500)[index % 3], bias_size=(7, 0)[index % 2],
                       dtype=(torch.float32, torch.bfloat16)[index % 2]) for index in range(count)]
    with triton_kernels.split_sums_gathered():
        for split_sum in sums:
            triton_kernels._add_splits(split_sum)
        assert counted.launches == 0 and all(split_sum.grad_w.isnan().all() for split_sum in sums)
    assert counted.launches == -(-count // triton_kernels.SUM_GROUPS)
    for split_sum in sums:
        expected_w, expected_b = _expected(split_sum)
        assert torch.equal(split_sum.grad_w, expected_w)
        if split_sum.total_size > split_sum.weight_size:
            assert torch.equal(split_sum.grad_b, expected_b)


def test_split_sums_outside_a_gathered_block_or_inside_a_tuners_run_add_at_once(triton_kernels, monkeypatch):
    counted = _counted_sums(monkeypatch, triton_kernels)
    generator = torch.Generator().manual_seed(0)
    alone = _split_sum(triton_kernels, generator, 3, 300, 5, torch.float32)
    triton_kernels._add_splits(alone)
    assert counted.launches == 1 and torch.equal(alone.grad_w, _expected(alone)[0])
    timed = _split_sum(triton_kernels, generator, 2, 300, 5, torch.float32)
    with triton_kernels.split_sums_gathered():
        with triton_kernels._split_sums_at_once():  # as _fastest times each way: the whole work each run
            triton_kernels._add_splits(timed)
            assert counted.launches == 2 and torch.equal(timed.grad_w, _expected(timed)[0])
        waiting = _split_sum(triton_kernels, generator, 2, 300, 5, torch.float32)
        triton_kernels._add_splits(waiting)  # gathered again once the tuner's block has ended
        assert counted.launches == 2
    assert counted.launches == 3 and torch.equal(waiting.grad_w, _expected(waiting)[0])


def test_a_gathered_block_that_raises_adds_nothing_and_gathers_no_more(triton_kernels, monkeypatch):
    counted = _counted_sums(monkeypatch, triton_kernels)
    generator = torch.Generator().manual_seed(1)
    with pytest.raises(RuntimeError, match="a kernel failed"):
        with triton_kernels.split_sums_gathered():
            triton_kernels._add_splits(_split_sum(triton_kernels, generator, 2, 50, 0, torch.float32))
            raise RuntimeError("a kernel failed")
    assert counted.launches == 0
    after = _split_sum(triton_kernels, generator, 2, 50, 0, torch.float32)
    triton_kernels._add_splits(after)
    assert counted.launches == 1 and torch.equal(after.grad_w, _expected(after)[0])


def test_a_chain_adds_its_layers_split_sums_after_its_last_layer(triton_kernels, monkeypatch):
    """Five wide layers, each weight gradient split over the batch (the interpreter's programs raised so
    that every layer splits): the chain's backward adds them in two launches (four, then one) where the
    layers one by one take five, with the same gradients to the bit."""
    monkeypatch.setattr(triton_kernels, "INTERPRETER_SPLIT_PROGRAMS", 64)
    counted = _counted_sums(monkeypatch, triton_kernels)
    torch.manual_seed(0)
    mlp = FusedMLP([33, 150, 140, 130, 145, 17], activation="tanh")
    x, target = torch.randn(300, 33), torch.randn(300, 17)

    def gradients():
        return torch.autograd.grad(mlp.loss(x, target), list(mlp.parameters()))
    chained = gradients()
    assert counted.launches == 2
    monkeypatch.setattr(mlp_layers, "_one_node", lambda plain, hooked: False)
    counted.launches = 0
    for got, expected in zip(chained, gradients(), strict=True):
        assert torch.equal(got, expected)
    assert counted.launches == 5
