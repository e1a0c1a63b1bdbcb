"""The storage analysis against its formulas and against a simulation of the seeds' example."""
import math

import pytest
import torch

from aefast.willshaw import WillshawMemory, theory
from tests.willshaw.conftest import random_patterns


def test_formulas_of_the_notes():
    assert theory.optimal_ones(4 * 2**18) == pytest.approx(18)
    assert theory.capacity(1_000_000, 18) == pytest.approx(math.log(2) * 1e12 / 324)
    assert theory.memory_load(2000, 2000, 10, 10, 20000) == pytest.approx(1 - (1 - 100 / 4e6) ** 20000, rel=1e-12)
    # Nothing stored sets nothing: +0.0, which a CSV writes as 0.0 (-expm1(0) is -0.0).
    assert math.copysign(1.0, theory.memory_load(2000, 2000, 10, 10, 0)) == 1.0
    # At the asymptotic capacity half the synapses are set.
    assert theory.memory_load(2**16, 2**16, 14, 14, theory.capacity(2**16, 14)) == pytest.approx(0.5, abs=1e-4)
    p1 = theory.memory_load(2000, 2000, 10, 10, 20000)
    assert theory.false_ones(2000, 10, 20000) == pytest.approx(1990 * p1**10, rel=1e-12)
    assert theory.false_ones(2000, 10, 20000) == pytest.approx(0.177, abs=5e-4)
    assert theory.false_ones(2000, 10, 20000, form="exact") == pytest.approx(0.222, abs=5e-4)


def test_capacity_with_a_false_ones_budget_meets_the_budget():
    pairs = theory.capacity(2000, 10, false_ones_budget=0.1)
    assert theory.false_ones(2000, 10, pairs) == pytest.approx(0.1, rel=1e-9)
    assert pairs < theory.capacity(2000, 10, false_ones_budget=0.2)
    # A budget of n - M false ones or more lets every unit fire: p1 stops just below 1, a finite L.
    assert math.isfinite(theory.capacity(100, 5, false_ones_budget=95)) and (
        theory.capacity(100, 5, false_ones_budget=95) > theory.capacity(100, 5, false_ones_budget=90))


def test_false_ones_of_a_memory_with_other_output_sizes():
    # n_out units with M_out ones each: the cue still has the input's M ones (c = M, not M_out).
    p1 = theory.memory_load(2000, 1500, 10, 8, 20000)
    assert theory.false_ones(2000, 10, 20000, n_out=1500, M_out=8) == pytest.approx((1500 - 8) * p1**10, rel=1e-12)
    assert theory.false_ones(2000, 10, 20000, n_out=1500, M_out=8, cue_ones=4) == pytest.approx(
        (1500 - 8) * p1**4, rel=1e-12)


def test_false_ones_at_the_edges():
    # Output patterns of every unit: no unit is off, so none can fire falsely, even after one pair
    # (where the exact form's (1 - pi (1 - r))^(L - 1) is 0^0).
    assert theory.false_ones(3, 2, 1, n_out=3, M_out=3, form="exact") == 0.0
    # Two pairs at n = 10^6: the true count is below 1e-90, under the exact form's rounding (60 + c
    # digits); the alternating sum may round below 0, and a count is never negative.
    assert theory.false_ones(10**6, 18, 2, form="exact") == 0.0
    # Many false ones leave nothing known of an answer: no information, rather than a negative amount.
    assert theory.bits_per_synapse(100, 5, 10, false_ones=1000) == 0.0


def test_exact_form_reduces_to_the_textbook_form_for_one_cue_unit():
    # With one cue unit there is no spread to account for: both forms are (n - M) p1, up to using L - 1.
    exact = theory.false_ones(5000, 8, 30000, cue_ones=1, form="exact")
    assert exact == pytest.approx(theory.false_ones(5000, 8, 29999, cue_ones=1), rel=1e-9)


def test_bits_per_synapse():
    n, ones = 2**16, 14
    pairs = theory.capacity(n, ones)
    stored = pairs * (math.lgamma(n + 1) - math.lgamma(ones + 1) - math.lgamma(n - ones + 1)) / math.log(2)
    assert theory.bits_per_synapse(n, ones, pairs) == pytest.approx(stored / n**2, rel=1e-12)
    assert 0.6 < theory.bits_per_synapse(n, ones, pairs) < math.log(2)
    assert theory.bits_per_synapse(n, ones, pairs, false_ones=1.0) < theory.bits_per_synapse(n, ones, pairs)


@pytest.mark.parametrize("call,match", [
    (lambda: theory.optimal_ones(0), "n must be a finite number > 0, got 0"),
    (lambda: theory.optimal_ones("a"), "n must be a finite number > 0, got 'a'"),
    (lambda: theory.optimal_ones(math.inf), "n must be a finite number > 0, got inf"),
    (lambda: theory.false_ones(100, 10, 5, n_out=50, M_out=51), "M_out <= n_out"),
    (lambda: theory.optimal_ones(4), "n must be > 4 for the optimal ones log2\\(n / 4\\) to be positive, got 4"),
    (lambda: theory.optimal_ones(2.5), "n must be > 4"),
    (lambda: theory.memory_load(10, 10, 2, 2, -1), "L must be a finite number >= 0, got -1"),
    (lambda: theory.memory_load(10, 10, -2, -2, 1), "M_in must be a finite number >= 0"),
    (lambda: theory.capacity(10, 11), "M must be <= n"),
    (lambda: theory.capacity(100, 5, false_ones_budget="1"), "false_ones_budget must be > 0"),
    (lambda: theory.false_ones(0, 0, 0), "n must be a finite number > 0, got 0"),
    (lambda: theory.false_ones(100, 10, -5), "L must be a finite number >= 0, got -5"),
    (lambda: theory.bits_per_synapse(0, 0, 0), "n must be a finite number > 0, got 0"),
    (lambda: theory.bits_per_synapse(100, 5, -1.0), "L must be a finite number >= 0"),
    (lambda: theory.bits_per_synapse(10, 11, 1.0), "M_out must be <= n_out"),
    (lambda: theory.false_ones(100, 10, 5, cue_ones=11), "cue_ones <= M"),
    (lambda: theory.false_ones(100, 10, 5, form="rough"), "form must be"),
    (lambda: theory.capacity(100, 5, false_ones_budget=0), "false_ones_budget must be > 0"),
    (lambda: theory.memory_load(10, 10, 20, 20, 1), "M_in \\* M_out"),
    (lambda: theory.bits_per_synapse(100, 5, 10, false_ones=-1), "false_ones must be >= 0"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_the_exact_form_counts_units_in_ints():
    assert theory.false_ones(100, 5, 10.5) > 0  # the textbook form is a formula of real L
    with pytest.raises(TypeError, match="form='exact' takes whole numbers: M must be an int, got 1.5"):
        theory.false_ones(100, 1.5, 10, form="exact")


def test_patterns_of_every_unit_set_every_synapse():
    """M = n: one pair sets the whole matrix (log1p(-1) would be -inf)."""
    assert theory.memory_load(8, 8, 8, 8, 0) == 0.0
    assert theory.memory_load(8, 8, 8, 8, 3) == 1.0
    assert theory.false_ones(8, 8, 3) == 0.0  # every output unit is on in every answer: none is false


@pytest.fixture(scope="module")
def seeds_example():
    """The seeds' figure: 20000 pairs of 10 ones in 2000 units."""
    generator = torch.Generator().manual_seed(12)
    x_idx, y_idx = random_patterns(20000, 2000, 10, generator), random_patterns(20000, 2000, 10, generator)
    memory = WillshawMemory(2000)
    memory.store_indices(x_idx, y_idx)
    return memory, x_idx, y_idx


def test_simulated_density_matches_the_memory_load(seeds_example):
    memory, _, _ = seeds_example
    assert memory.density == pytest.approx(0.3935, abs=0.01)


@pytest.mark.parametrize("cue_ones", [10, 8, 6])
def test_simulated_false_ones_match_the_exact_form(seeds_example, cue_ones):
    memory, x_idx, y_idx = seeds_example
    # Every stored pair recalled once: the standard error of the mean is about 1% of it here.
    answers = memory.retrieve(_dense(x_idx[:, :cue_ones]))
    targets = _dense(y_idx)
    assert not (targets & ~answers).any()  # the hard threshold never misses a stored one
    false_ones = (answers & ~targets).sum(1).double().mean().item()
    assert false_ones == pytest.approx(theory.false_ones(2000, 10, 20000, cue_ones=cue_ones, form="exact"), rel=0.10)


def _dense(indices):
    out = torch.zeros(indices.shape[0], 2000, dtype=torch.bool)
    out[torch.arange(indices.shape[0]).unsqueeze(1), indices] = True
    return out


def test_exact_false_ones_survive_the_cancellation_of_their_alternating_sum():
    # n = 10^6, M = 18, L = 10^8 (the seeds' example at 5% of capacity): the textbook form gives 1.16e-21;
    # the exact form's inclusion-exclusion cancels terms of 10^4 down to that, which float64 turned into
    # 0.014 false ones. Far below capacity, each unit's load spreads a little: exact is slightly larger.
    textbook = theory.false_ones(10**6, 18, 10**8)
    exact = theory.false_ones(10**6, 18, 10**8, form="exact")
    assert 1.0 < exact / textbook < 1.2
    # At capacity the forms meet what the H200 run measured (docs/willshaw_million: 3.812).
    assert theory.false_ones(10**6, 18, 2_139_000_000, form="exact") == pytest.approx(3.8139, rel=1e-4)
