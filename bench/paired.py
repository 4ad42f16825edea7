"""Is one model's GSM8K score really above another's? A paired comparison on the same problems.

Two models scored on the same 1,319 problems are not two independent samples: most problems are solved by both
or by neither, and only the problems they disagree on carry the difference. So the comparison is paired:
- the difference of pass@1, x - y, with a 95% confidence interval from the per-problem differences
  d_i = x_i - y_i (normal approximation: mean(d) +- 1.96 * sd(d) / sqrt(n), sd with n - 1);
- McNemar's exact test: under "no difference" each disagreement is a fair coin, so with b problems only x solves
  and c only y solves, the two-sided p-value is min(1, 2 * P(Binomial(b + c, 1/2) <= min(b, c))).
At GSM8K's size an unpaired 95% interval on one score is about +-2.4 points; the paired one on a difference is
usually half that or less, which is what lets a 2-3 point gap between two arms be told from noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PairedDifference:
    diff: float        # pass@1 of x minus pass@1 of y
    ci_low: float      # 95% confidence interval of diff
    ci_high: float
    only_x: int        # problems x solves and y does not (McNemar's b)
    only_y: int        # and the other way round (c)
    p_value: float     # McNemar's exact two-sided test

    def describe(self) -> str:
        """One phrase for a results file, e.g. "+0.0303 (95% CI +0.0121 to +0.0485; 60 vs 20 problems solved by
        only one, McNemar p = 7e-06)"."""
        return (f"{self.diff:+.4f} (95% CI {self.ci_low:+.4f} to {self.ci_high:+.4f}; {self.only_x} vs "
                f"{self.only_y} problems solved by only one, McNemar p = {self.p_value:.2g})")


def binomial_cdf_half(k: int, n: int) -> float:
    """P(Binomial(n, 1/2) <= k), exactly (integer arithmetic, so no underflow at n in the thousands)."""
    if k < 0:
        return 0.0
    return sum(math.comb(n, i) for i in range(min(k, n) + 1)) / 2**n


def paired_difference(x: Sequence[bool], y: Sequence[bool]) -> PairedDifference:
    """x's pass@1 minus y's over the same problems, with its 95% interval and McNemar's exact p-value."""
    if len(x) != len(y) or not x:
        raise ValueError(f"paired_difference needs two outcome lists of one non-zero length, got {len(x)} and "
                         f"{len(y)}")
    n = len(x)
    d = [int(bool(a)) - int(bool(b)) for a, b in zip(x, y, strict=True)]
    mean = sum(d) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n)
    only_x, only_y = d.count(1), d.count(-1)
    p = min(1.0, 2 * binomial_cdf_half(min(only_x, only_y), only_x + only_y)) if only_x + only_y else 1.0
    return PairedDifference(mean, mean - half, mean + half, only_x, only_y, p)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval of a proportion from `successes` of `n` (Wilson's score interval: unlike the normal one it
    stays inside [0, 1] and keeps its coverage at the few dozen held-out pairs an accuracy is measured on here)."""
    if n <= 0:
        raise ValueError(f"wilson_interval needs n > 0, got {n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)  # clamped: 0 of n is (0, x), not (-1e-17, x)
