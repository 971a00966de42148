"""Paired statistics for two classifiers scored on the same test images.

A difference in top-1 between two networks of one seed is paired (same images), so its noise is
the images on which they disagree, not the spread of either accuracy: per seed, an exact McNemar
test on those images; over seeds, a Student-t interval of the mean difference.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

LEVEL = 0.95  # of the interval over seeds
ALPHA = 0.05  # a McNemar p below it marks a seed's difference as significant
# Differences of top-1 are multiples of 1/images: equal ones differ by float rounding (1e-17), unequal ones by at
# least 1/images (a std above 5e-7 for a million images).
NO_SPREAD = 1e-9


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p: under equal accuracy each image that exactly one of the two classifies
    correctly is a fair coin's toss; p = P(a split at least this uneven). No such image: p = 1."""
    discordant = only_a + only_b
    return 1.0 if discordant == 0 else float(stats.binomtest(only_a, discordant, 0.5).pvalue)


def mean_interval(differences: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval over seeds at LEVEL. NaN bounds where there is no spread to estimate
    it from: one seed, or seeds that all give the same difference (a zero-width interval would exclude 0 for any
    difference, however few images it rests on)."""
    differences = np.asarray(differences, dtype=np.float64)
    mean = float(differences.mean())
    spread = differences.std(ddof=1) if len(differences) > 1 else 0.0
    if spread < NO_SPREAD:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.5 + LEVEL / 2, len(differences) - 1) * spread / math.sqrt(len(differences))
    return mean, float(mean - half), float(mean + half)


def compare(hits_a: np.ndarray, hits_b: np.ndarray) -> dict[str, float | int]:
    """Top-1 of each, their difference a - b and the McNemar test, from per-image hits on the same images."""
    only_a, only_b = int((hits_a & ~hits_b).sum()), int((~hits_a & hits_b).sum())
    top1_a, top1_b = float(hits_a.mean()), float(hits_b.mean())
    return {"images": len(hits_a), "top1_a": top1_a, "top1_b": top1_b, "difference": top1_a - top1_b,
            "only_a": only_a, "only_b": only_b, "mcnemar_p": mcnemar_exact(only_a, only_b)}
