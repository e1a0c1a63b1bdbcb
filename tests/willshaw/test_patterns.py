"""aefast.willshaw.random_patterns, the experiments' pattern source: distinct sorted positions in range,
uniform over them, repeatable from the generator, and its arguments checked by name."""
import pytest
import torch

from aefast.willshaw import random_patterns


# (n, ones): sparse (one pass, rare redraws), many redraws (10 of 20), and dense (the permutation path).
@pytest.mark.parametrize("n, ones", [(100000, 15), (20, 10), (30, 25), (7, 7), (9, 0)])
def test_rows_hold_distinct_sorted_positions_in_range(n, ones):
    patterns = random_patterns(4000, n, ones, generator=torch.Generator().manual_seed(1))
    assert patterns.shape == (4000, ones) and patterns.dtype == torch.int64
    assert bool((patterns[:, 1:] > patterns[:, :-1]).all())  # sorted and distinct
    if ones:
        assert int(patterns.min()) >= 0 and int(patterns.max()) < n


@pytest.mark.parametrize("n, ones", [(20, 10), (30, 25), (50, 3)])
def test_every_position_is_equally_likely(n, ones):
    """Each position's count is Binomial(count, ones / n): within 5 standard deviations of its mean."""
    count = 20000
    patterns = random_patterns(count, n, ones, generator=torch.Generator().manual_seed(2))
    hits = torch.bincount(patterns.flatten(), minlength=n).double()
    p = ones / n
    assert float((hits - count * p).abs().max()) <= 5 * (count * p * (1 - p)) ** 0.5


def test_a_generator_seed_repeats_the_patterns():
    draw = [random_patterns(500, 1000, 9, generator=torch.Generator().manual_seed(seed)) for seed in (3, 3, 4)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])


@pytest.mark.parametrize("count, n, ones, match", [
    (-1, 10, 3, r"count must be an int >= 0, got -1"),
    (2.5, 10, 3, r"count must be an int >= 0, got 2.5"),
    (5, 0, 0, r"n must be a positive int, got 0"),
    (5, True, 0, r"n must be a positive int, got True"),
    (5, 10, -1, r"ones must be an int in \[0, n=10\], got -1"),
    (5, 10, 11, r"ones must be an int in \[0, n=10\], got 11"),
    (5, 10, 3.0, r"ones must be an int in \[0, n=10\], got 3.0"),
])
def test_bad_arguments_are_refused_by_name(count, n, ones, match):
    with pytest.raises(ValueError, match=match):
        random_patterns(count, n, ones)
