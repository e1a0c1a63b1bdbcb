"""The launchers' size arithmetic gives Triton's results (it replaces triton.cdiv and next_power_of_2
on the host, where those cost microseconds a call)."""
import pytest

from aefast._sizes import cdiv, next_power_of_2

triton = pytest.importorskip("triton")

SIZES = list(range(0, 4100)) + [2**31 - 1, 2**31, 2**31 + 1, 2**40 + 3, 2**62]


def test_next_power_of_2_is_tritons():
    assert [next_power_of_2(n) for n in SIZES] == [triton.next_power_of_2(n) for n in SIZES]


@pytest.mark.parametrize("divisor", [1, 2, 3, 16, 128, 1000, 2**16 - 1])
def test_cdiv_is_tritons(divisor):
    assert [cdiv(n, divisor) for n in SIZES] == [triton.cdiv(n, divisor) for n in SIZES]
