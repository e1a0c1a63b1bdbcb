"""aefast._memory's measure of what autograd keeps for backward, which the MLP's memory tests use."""
import torch

from aefast._memory import saved_for_backward_bytes


def test_saved_for_backward_counts_each_storage_once_and_only_large_ones():
    a = torch.randn(100, 50, requires_grad=True)
    b = torch.randn(50, 20, requires_grad=True)  # 1000 elements
    assert saved_for_backward_bytes(lambda: a @ b) == (a.numel() + b.numel()) * 4  # mm saves both factors
    assert saved_for_backward_bytes(lambda: (a * a).sum()) == a.numel() * 4  # saved twice, held once
    assert saved_for_backward_bytes(lambda: a[:10] * a[10:20]) == a.numel() * 4  # two views of one storage
    assert saved_for_backward_bytes(lambda: a @ b, smallest=1001) == a.numel() * 4
    with torch.no_grad():
        assert saved_for_backward_bytes(lambda: a @ b) == 0
