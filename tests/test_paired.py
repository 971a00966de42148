"""Paired statistics against values computed by hand."""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from fgkd.paired import compare, mcnemar_detectable, mcnemar_exact, mean_detectable, mean_interval

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
    # a alone right on images 2 and 3, b alone on image 4: 2 : 1 -> p = 2 * (C(3,0) + C(3,1)) / 8 = 1 (capped);
    # no split of 3 discordant images is significant, so none is detectable
    assert math.isnan(row.pop("detectable"))
    assert row == {"images": 6, "top1_a": 4 / 6, "top1_b": 3 / 6, "difference": 4 / 6 - 3 / 6, "only_a": 2,
                   "only_b": 1, "mcnemar_p": 1.0}
    assert compare(np.repeat(a, 10), np.repeat(b, 10))["detectable"] == mcnemar_detectable(30, 60)


def power_of_20(pi):
    """Power of the exact McNemar test on 20 discordant images, each a's with chance pi. It rejects for k <= 5 or
    k >= 15 of them to a: 2 P(X <= 5) = 2 (1 + 20 + 190 + 1140 + 4845 + 15504) / 2^20 = 43400 / 1048576 = 0.0414 < 0.05,
    2 P(X <= 6) = 2 (21700 + 38760) / 2^20 = 0.115 > 0.05 (X ~ Binomial(20, 1/2)). Power: P(X >= 15) + P(X <= 5),
    X ~ Binomial(20, pi)."""
    tail = [sum(math.comb(20, j) for j in range(k + 1)) / 2**20 for k in (5, 6)]  # P(X <= 5), P(X <= 6)
    assert 2 * tail[0] < 0.05 < 2 * tail[1]
    return sum(math.comb(20, k) * pi**k * (1 - pi)**(20 - k) for k in (*range(6), *range(15, 21)))


def test_detectable_difference_of_20_discordant_images_has_80_percent_power():
    difference = mcnemar_detectable(20, 500)
    pi = 0.5 + difference * 500 / 20 / 2  # difference = (2 pi - 1) 20 / 500
    assert power_of_20(pi) == pytest.approx(0.8, abs=1e-9)
    assert power_of_20(pi - 1e-6) < 0.8  # the smallest such
    grid = np.linspace(0.5, 1, 500_001)  # brute force: the first pi on a fine grid with power >= 0.8
    first = grid[np.argmax(power_of_20(grid) >= 0.8)]
    assert pi == pytest.approx(first, abs=1e-6) and pi == pytest.approx(0.79872, abs=1e-5)
    assert difference == pytest.approx((2 * 0.79872 - 1) * 20 / 500, abs=1e-6)  # 2.39 points


def test_six_discordant_images_are_the_fewest_any_split_of_which_is_significant():
    # 2 / 2^5 = 0.0625 >= 0.05: no split of 5 or fewer is significant, so no difference is detectable; 2 / 2^6 < 0.05:
    # only all 6 one way, power pi^6 + (1 - pi)^6
    assert all(math.isnan(mcnemar_detectable(discordant, 100)) for discordant in range(6))
    pi = 0.5 + mcnemar_detectable(6, 100) * 100 / 6 / 2
    assert pi**6 + (1 - pi)**6 == pytest.approx(0.8, abs=1e-9)


def test_detectable_difference_grows_with_the_disagreement_and_shrinks_with_the_images():
    """More images on which the two disagree is more noise: a larger difference in points (about sqrt(D), as the
    normal approximation (z_0.975 + z_0.8) sqrt(D) / N has it), though a smaller share of the discordant images.
    Between neighbouring D it is a sawtooth (the exact test's rejection region grows in steps)."""
    counts = [25, 100, 400, 1600]
    differences = [mcnemar_detectable(discordant, 2000) for discordant in counts]
    assert differences == sorted(differences) and len(set(differences)) == 4
    shares = [d * 2000 / discordant for d, discordant in zip(differences, counts)]
    assert shares == sorted(shares, reverse=True)
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    for discordant, difference in zip(counts[1:], differences[1:]):
        assert difference == pytest.approx(z * math.sqrt(discordant) / 2000, rel=0.05)
    assert mcnemar_detectable(100, 4000) == pytest.approx(differences[1] / 2, rel=1e-12)  # a fraction of the images


def power_of_t_test(d, seeds):
    """Power of the two-sided one-sample t-test at 0.05 of seeds differences with true mean d standard deviations,
    without the noncentral t: T = (Z + d sqrt(S)) / sqrt(V / (S - 1)), Z normal, V chi-square of S - 1 degrees of
    freedom; P(|T| > t_crit) = E_V[Phi(d sqrt(S) - t_crit sqrt(V / (S - 1))) + Phi(-d sqrt(S) - t_crit sqrt(...))]."""
    df, shift = seeds - 1, d * math.sqrt(seeds)
    critical = stats.t.ppf(0.975, df)

    def integrand(v):
        scale = critical * math.sqrt(v / df)
        return (stats.norm.cdf(shift - scale) + stats.norm.cdf(-shift - scale)) * stats.chi2.pdf(v, df)

    return integrate.quad(integrand, 0, math.inf, epsabs=1e-13, epsrel=1e-12, limit=200)[0]


# d of statsmodels 0.15.0 TTestPower().solve_power(nobs=S, alpha=0.05, power=0.8, alternative="two-sided")
@pytest.mark.parametrize("seeds,d", [(2, 11.549889754978167), (3, 3.264043552819638), (5, 1.6819970833232674),
                                     (10, 0.9960019107624178)])
def test_detectable_mean_difference_is_the_t_test_effect_size_of_80_percent_power_times_the_spread(seeds, d):
    differences = np.linspace(-0.01, 0.05, seeds)
    spread = differences.std(ddof=1)
    detectable = mean_detectable(differences)
    assert detectable / spread == pytest.approx(d, rel=1e-6)
    assert power_of_t_test(detectable / spread, seeds) == pytest.approx(0.8, abs=1e-9)
    assert power_of_t_test(0.999 * detectable / spread, seeds) < 0.8
    assert mean_detectable(differences + 0.3) == pytest.approx(detectable, rel=1e-12)  # the spread's, not the mean's


@pytest.mark.parametrize("differences", [[0.04], [0.02, 0.02, 0.02], [300 / 575 - 298 / 575, 2 / 575]])
def test_no_detectable_mean_difference_where_there_is_no_interval(differences):
    assert math.isnan(mean_detectable(np.array(differences)))
