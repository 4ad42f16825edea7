"""bench/paired.py against hand-computed values."""

from __future__ import annotations

import pytest

from bench.paired import binomial_cdf_half, paired_difference, wilson_interval


def test_paired_difference_hand_computed() -> None:
    # 10 problems: x solves 1-4 and 6-7, y solves 5-7: 4 only by x, 1 only by y, 2 by both, 3 by neither.
    x = [1, 1, 1, 1, 0, 1, 1, 0, 0, 0]
    y = [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    result = paired_difference([bool(v) for v in x], [bool(v) for v in y])
    # d = four 1s, one -1, five 0s: mean 0.3; squared deviations 4 * 0.49 + 1.69 + 5 * 0.09 = 4.1, / 9 -> sd
    # 0.674949; half-width 1.96 * 0.674949 / sqrt(10) = 0.418337.
    assert result.diff == pytest.approx(0.3)
    assert result.ci_low == pytest.approx(0.3 - 0.418337, abs=1e-6)
    assert result.ci_high == pytest.approx(0.3 + 0.418337, abs=1e-6)
    assert (result.only_x, result.only_y) == (4, 1)
    # McNemar: P(Bin(5, 1/2) <= 1) = (1 + 5) / 32, two-sided 0.375
    assert result.p_value == pytest.approx(0.375)
    assert result.describe().startswith("+0.3000 (95% CI -0.1183 to +0.7183; 4 vs 1 problems")


def test_paired_difference_symmetry_and_ties() -> None:
    x, y = [True, False, True, False], [False, True, True, False]
    forward, backward = paired_difference(x, y), paired_difference(y, x)
    assert forward.diff == 0 and forward.p_value == 1.0  # one disagreement each way: min(1, 2 * 3/4)
    assert (backward.only_x, backward.only_y) == (forward.only_y, forward.only_x)
    same = paired_difference(x, x)
    assert (same.diff, same.ci_low, same.ci_high, same.p_value) == (0, 0, 0, 1.0)


def test_binomial_cdf_half_exact_at_gsm8k_sizes() -> None:
    assert binomial_cdf_half(0, 3) == pytest.approx(1 / 8)
    assert binomial_cdf_half(3, 3) == 1.0
    assert binomial_cdf_half(-1, 3) == 0.0
    # 1,319 disagreements split 600 / 719: far in the tail but not underflowed to 0
    assert 0 < binomial_cdf_half(600, 1319) < 1e-3


def test_paired_difference_refuses_unpaired_lists() -> None:
    with pytest.raises(ValueError, match="one non-zero length, got 3 and 2"):
        paired_difference([True] * 3, [True] * 2)


def test_wilson_interval_against_hand_values() -> None:
    # 5 of 10: centre (0.5 + 1.96^2/20) / (1 + 1.96^2/10) = 0.5; half 1.96 * sqrt(0.025 + 0.0096) / 1.3842 = 0.2634
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    # 0 of 10: the interval starts at 0 (not at -1e-17) and ends at 1.96^2 / (10 + 1.96^2) = 0.2775
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError, match="n > 0"):
        wilson_interval(0, 0)
