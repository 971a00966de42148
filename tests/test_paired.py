"""Paired statistics against values computed by hand."""

import math

import numpy as np
import pytest

from fgkd.paired import compare, mcnemar_exact, mean_interval

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("only_a,only_b,expected", [
    # 10 discordant images split 1 : 9. Under equal accuracy each is a fair coin, so
    # p = 2 * P(X <= 1), X ~ Binomial(10, 1/2) = 2 * (C(10,0) + C(10,1)) / 2^10 = 2 * 11 / 1024 = 0.021484375.
    (1, 9, 2 * (math.comb(10, 0) + math.comb(10, 1)) / 2**10),
    (9, 1, 22 / 1024),  # two-sided: the same split the other way round
    # 2 : 10 -> 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2 * (1 + 12 + 66) / 4096 = 158 / 4096.
    (2, 10, 158 / 4096),
    (0, 3, 2 * 1 / 2**3),  # 2 * C(3,0) / 8 = 0.25
    (5, 5, 1.0),  # an even split: 2 * P(X <= 5) > 1, capped at 1
    (0, 0, 1.0),  # no image on which they disagree: no evidence either way
])
def test_exact_mcnemar_p_of_small_tables(only_a, only_b, expected):
    assert mcnemar_exact(only_a, only_b) == pytest.approx(expected, rel=1e-12)


def test_interval_of_three_seeds_is_mean_plus_minus_t_times_standard_error():
    # differences 0.01, 0.03, 0.05: mean 0.03; sample std sqrt((0.02^2 + 0 + 0.02^2) / 2) = 0.02;
    # t_{0.975, 2 degrees of freedom} = 4.302652729749462; half width 4.302652729749462 * 0.02 / sqrt(3) = 0.04968...
    mean, low, high = mean_interval(np.array([0.01, 0.03, 0.05]))
    half = 4.302652729749462 * 0.02 / math.sqrt(3)
    assert mean == pytest.approx(0.03) and half == pytest.approx(0.0496827, abs=1e-7)
    assert (low, high) == (pytest.approx(0.03 - half), pytest.approx(0.03 + half))


def test_one_seed_has_a_mean_and_no_interval():
    mean, low, high = mean_interval(np.array([0.04]))
    assert mean == 0.04 and math.isnan(low) and math.isnan(high)


@pytest.mark.parametrize("differences", [[0.02, 0.02, 0.02], [300 / 575 - 298 / 575, 310 / 575 - 308 / 575, 2 / 575]])
def test_seeds_that_all_give_the_same_difference_have_no_interval(differences):
    """A zero-width interval excludes 0 for any difference: it was printed as significant while every seed's McNemar
    p was 1. Equal differences computed from other counts differ by float rounding only."""
    mean, low, high = mean_interval(np.array(differences))
    assert mean == pytest.approx(differences[0]) and math.isnan(low) and math.isnan(high)


def test_compare_counts_the_images_only_one_of_the_two_gets_right():
    a = np.array([True, True, True, False, False, True])
    b = np.array([True, False, False, True, False, True])
    row = compare(a, b)
    # a alone right on images 2 and 3, b alone on image 4: 2 : 1 -> p = 2 * (C(3,0) + C(3,1)) / 8 = 1 (capped)
    assert row == {"images": 6, "top1_a": 4 / 6, "top1_b": 3 / 6, "difference": 4 / 6 - 3 / 6, "only_a": 2,
                   "only_b": 1, "mcnemar_p": 1.0}
