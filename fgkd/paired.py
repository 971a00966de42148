"""Paired statistics for two classifiers scored on the same test images.

A difference in top-1 between two networks of one seed is paired (same images), so its noise is
the images on which they disagree, not the spread of either accuracy: per seed, an exact McNemar
test on those images; over seeds, a Student-t interval of the mean difference. Beside each, the smallest difference
it detects with POWER, so that a difference not found significant reads "none larger than this".
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

LEVEL = 0.95  # of the interval over seeds
ALPHA = 0.05  # a McNemar p below it marks a seed's difference as significant
POWER = 0.80  # the chance with which a difference of the detectable size is found significant
# Differences of top-1 are multiples of 1/images: equal ones differ by float rounding (1e-17), unequal ones by at
# least 1/images (a std above 5e-7 for a million images).
NO_SPREAD = 1e-9


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p: under equal accuracy each image that exactly one of the two classifies
    correctly is a fair coin's toss; p = P(a split at least this uneven). No such image: p = 1."""
    discordant = only_a + only_b
    return 1.0 if discordant == 0 else float(stats.binomtest(only_a, discordant, 0.5).pvalue)


def mcnemar_detectable(discordant: int, images: int) -> float:
    """The smallest difference in top-1 (a fraction of ``images``) that mcnemar_exact detects with POWER, given the
    seed's ``discordant`` images (only_a + only_b): the test rejects for the splits k of them to a with
    mcnemar_exact(k, discordant - k) < ALPHA, k <= c or k >= discordant - c; if each goes to a with chance pi, its
    power is P(X <= c) + P(X >= discordant - c), X ~ Binomial(discordant, pi), which grows with |pi - 1/2| to 1 at
    pi = 1; the expected difference is (2 pi - 1) discordant / images at the pi where the power is POWER. NaN where no
    split is significant (5 or fewer discordant images, 0 included): no difference is detected at all."""
    def rejects(k: int) -> bool:
        return mcnemar_exact(k, discordant - k) < ALPHA

    if not rejects(0):
        return math.nan
    c, high = 0, discordant // 2  # the p value grows from k = 0 to an even split: c by bisection
    while c < high:
        middle = (c + high + 1) // 2
        c, high = (middle, high) if rejects(middle) else (c, middle - 1)

    def power(pi: float) -> float:
        return float(stats.binom.cdf(c, discordant, pi) + stats.binom.sf(discordant - c - 1, discordant, pi))

    pi = optimize.brentq(lambda pi: power(pi) - POWER, 0.5, 1.0, xtol=1e-14)
    return (2 * pi - 1) * discordant / images


def _spread(differences: np.ndarray) -> float:
    """The sample std of the per-seed differences; 0 from one seed."""
    return float(differences.std(ddof=1)) if len(differences) > 1 else 0.0


def mean_interval(differences: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval over seeds at LEVEL. NaN bounds where there is no spread to estimate
    it from: one seed, or seeds that all give the same difference (a zero-width interval would exclude 0 for any
    difference, however few images it rests on)."""
    differences = np.asarray(differences, dtype=np.float64)
    mean = float(differences.mean())
    spread = _spread(differences)
    if spread < NO_SPREAD:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.5 + LEVEL / 2, len(differences) - 1) * spread / math.sqrt(len(differences))
    return mean, float(mean - half), float(mean + half)


def mean_detectable(differences: np.ndarray) -> float:
    """The smallest true mean difference that mean_interval's interval excludes 0 for with POWER (a two-sided
    one-sample t-test at 1 - LEVEL), the seeds' differences spread by their observed std s: d s, where d solves
    P(|T| > t_crit) = POWER for T noncentral t with S - 1 degrees of freedom and noncentrality d sqrt(S), S seeds.
    NaN where mean_interval has no interval."""
    differences = np.asarray(differences, dtype=np.float64)
    seeds, spread = len(differences), _spread(differences)
    if spread < NO_SPREAD:
        return math.nan
    critical = stats.t.ppf(0.5 + LEVEL / 2, seeds - 1)

    def power(d: float) -> float:
        # P(T > t_crit) + P(-T > t_crit), -T noncentral t of noncentrality -d sqrt(S): nct.cdf(-t_crit) is NaN far in
        # the tail (scipy 1.17, one degree of freedom), its sf is not
        shift = d * math.sqrt(seeds)
        return float(stats.nct.sf(critical, seeds - 1, shift) + stats.nct.sf(critical, seeds - 1, -shift))

    high = 1.0
    while power(high) < POWER:  # the power grows with d towards 1
        high *= 2
    return float(optimize.brentq(lambda d: power(d) - POWER, 0.0, high, xtol=1e-12) * spread)


def compare(hits_a: np.ndarray, hits_b: np.ndarray) -> dict[str, float | int]:
    """Top-1 of each, their difference a - b, the McNemar test and the difference it detects, from per-image hits on
    the same images."""
    only_a, only_b = int((hits_a & ~hits_b).sum()), int((~hits_a & hits_b).sum())
    top1_a, top1_b = float(hits_a.mean()), float(hits_b.mean())
    return {"images": len(hits_a), "top1_a": top1_a, "top1_b": top1_b, "difference": top1_a - top1_b,
            "only_a": only_a, "only_b": only_b, "mcnemar_p": mcnemar_exact(only_a, only_b),
            "detectable": mcnemar_detectable(only_a + only_b, len(hits_a))}
