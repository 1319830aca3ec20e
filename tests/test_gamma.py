import jax
import numpy as np
import pytest
import scipy.stats

from adaptive_diffusion._gamma import gamma


TINY = float(np.finfo(np.float32).tiny)


@pytest.mark.parametrize(("a", "rounds"), [(1 / 15, 4), (1 / 15, 1), (2.5, 4)])
def test_gamma_draws_follow_the_gamma_law(getkey, a, rounds):
    # 64 rows of 4,000 draws, vmapped as in a train step (the fallback loop's predicate is
    # then batched). With rounds=1 about 0.2% of the entries reach the whole-array loop,
    # so both paths are checked. Kolmogorov-Smirnov over n = 256,000 draws: the
    # critical distance at level 1e-4 is 1.95/sqrt(n) = 0.0039; float32 has no normal
    # value below TINY, so the law compared with is that of max(G, TINY) (0.3% of the
    # mass for a = 1/15, 0 otherwise).
    keys = jax.random.split(getkey(), 64)
    draws = jax.jit(jax.vmap(lambda k: gamma(k, a, (4_000,), rounds=rounds)))(keys)
    x = np.asarray(draws, np.float64).ravel()
    assert np.all(np.isfinite(x)) and np.all(x >= 0)
    law = scipy.stats.gamma(a)
    distance = scipy.stats.kstest(x, lambda v: law.cdf(np.maximum(v, TINY))).statistic
    assert distance < 1.95 / np.sqrt(x.size)
    # Mean a and variance a, within 5 standard errors (the variance's from the fourth
    # central moment 3a^2 + 6a).
    assert abs(x.mean() - a) < 5 * np.sqrt(a / x.size)
    assert abs(x.var() - a) < 5 * np.sqrt((3 * a**2 + 6 * a - a**2) / x.size)


def test_gamma_keeps_shape_and_refuses_a_bad_shape_parameter(getkey):
    assert jax.eval_shape(lambda k: gamma(k, 0.5, (3, 2, 5)), getkey()).shape == (3, 2, 5)
    one = jax.jit(lambda k: gamma(k, 0.5, (1,)))(getkey())
    assert one.shape == (1,) and one[0] > 0
    with pytest.raises(ValueError, match="a > 0"):
        gamma(getkey(), 0.0, (3,))
