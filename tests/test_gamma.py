import jax
import numpy as np
import pytest
import scipy.stats

from adaptive_diffusion._gamma import gamma


FLOOR = 1e-30


@pytest.mark.parametrize(("a", "rounds"), [(1 / 15, 4), (1 / 15, 1), (1.0, 4)])
def test_gamma_draws_follow_the_gamma_law(getkey, a, rounds):
    # 64 rows of 4,000 draws, vmapped as in a train step (the fallback loop's predicate is
    # then batched). With rounds=1 about 0.3% of the entries reach the whole-array loop,
    # so both paths are checked. Float32 has no normal value below 2^-126, so the law is
    # checked in two parts: the fraction of draws below FLOOR = 1e-30 (1.0% for a = 1/15,
    # where float32 still resolves the draws) against P(G < FLOOR) within 5 binomial
    # standard errors, and Kolmogorov-Smirnov on the draws above it against the law
    # conditioned on G >= FLOOR: over n ~ 256,000 draws the critical distance at level
    # 1e-4 is 1.95/sqrt(n) = 0.0039.
    keys = jax.random.split(getkey(), 64)
    draws = jax.jit(jax.vmap(lambda k: gamma(k, a, (4_000,), rounds=rounds)))(keys)
    x = np.asarray(draws, np.float64).ravel()
    assert np.all(np.isfinite(x)) and np.all(x >= 0)
    law = scipy.stats.gamma(a)
    below = law.cdf(FLOOR)
    assert abs(np.mean(x < FLOOR) - below) < 5 * np.sqrt(below * (1 - below) / x.size) + 1e-12
    above = x[x >= FLOOR]
    conditioned = lambda v: (law.cdf(v) - below) / (1 - below)  # noqa: E731
    assert scipy.stats.kstest(above, conditioned).statistic < 1.95 / np.sqrt(above.size)
    # Mean a and variance a, within 5 standard errors (the variance's from the fourth
    # central moment 3a^2 + 6a).
    assert abs(x.mean() - a) < 5 * np.sqrt(a / x.size)
    assert abs(x.var() - a) < 5 * np.sqrt((3 * a**2 + 6 * a - a**2) / x.size)


def test_gamma_keeps_shape_and_refuses_a_bad_shape_parameter(getkey):
    assert jax.eval_shape(lambda k: gamma(k, 0.5, (3, 2, 5)), getkey()).shape == (3, 2, 5)
    one = jax.jit(lambda k: gamma(k, 0.5, (1,)))(getkey())
    assert one.shape == (1,) and one[0] > 0
    for a in (0.0, 1.5):
        with pytest.raises(ValueError, match="0 < a <= 1"):
            gamma(getkey(), a, (3,))
