"""HTI (SPEC 3.9) against a brute-force reference and the paper's worked examples."""

import itertools
import math

import numpy as np
import pytest

from pathomch_assets.heterogeneity import hti_from_calls, hti_from_tensor


def brute_force_hti(calls):
    """Enumerate every combination of positive traits as a tuple and count tiles, pure Python."""
    n = len(calls[0])
    combos = [c for c in itertools.product([0, 1], repeat=n) if any(c)]
    positive = [tuple(int(v) for v in row) for row in calls if any(row)]
    if n == 1 or not positive:
        return 0.0
    total = 0.0
    for c in combos:
        p = positive.count(c) / len(positive)
        if p > 0:
            total -= p * math.log(p, len(combos))
    return total


@pytest.mark.parametrize("n_traits", [1, 2, 3, 4, 5])
def test_matches_brute_force_on_random_tensors(n_traits):
    rng = np.random.default_rng(n_traits)
    for _ in range(25):
        rows, cols = rng.integers(1, 12, 2)
        tensor = rng.random((n_traits, rows, cols)) < rng.uniform(0.05, 0.9)
        mask = rng.random((rows, cols)) < 0.8
        calls = tensor[:, mask].T
        expected = brute_force_hti(calls.tolist()) if len(calls) else 0.0
        got = hti_from_tensor(tensor, mask)
        assert got == pytest.approx(expected, abs=1e-12)
        assert 0.0 <= got <= 1.0


def test_paper_examples():
    assert hti_from_calls([[1, 1]] * 9) == 0.0  # every positive tile in one combination
    assert hti_from_calls([[1, 0], [0, 1], [1, 1]] * 4) == pytest.approx(1.0)  # a third each: A, B, Both
    assert hti_from_calls([[0, 0]] * 5) == 0.0  # no positive tile
    assert hti_from_calls([[1], [0], [1]]) == 0.0  # N = 1: C = 1, defined as 0
    # negative tiles do not count: same HTI with or without them
    assert hti_from_calls([[1, 0], [0, 1], [0, 0], [0, 0]]) == hti_from_calls([[1, 0], [0, 1]])
    # half A-only, half B-only over C = 3 combinations: log_3 2
    assert hti_from_calls([[1, 0], [0, 1]]) == pytest.approx(math.log(2, 3))


def test_uniform_over_all_combinations_is_one_for_any_n():
    for n in range(2, 6):
        combos = [c for c in itertools.product([0, 1], repeat=n) if any(c)]
        assert hti_from_calls(combos) == pytest.approx(1.0)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="2-D"):
        hti_from_calls([1, 0, 1])
