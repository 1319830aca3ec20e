"""The noise families: moments against their closed forms, by quadrature and by sampling."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptive_diffusion as ad


# (family, quadrature range): the ranges hold all but < 1e-12 of each density's mass and
# of its fourth moment (Student-t with df = 10 decays as |x|^-11).
FAMILIES = [
    (ad.GaussianNoise(), (-12.0, 12.0)),
    (ad.LaplaceNoise(), (-30.0, 30.0)),
    (ad.UniformNoise(), (-math.sqrt(3.0), math.sqrt(3.0))),
    (ad.GumbelNoise(), (-3.0, 40.0)),
    (ad.ExponentialNoise(), (-1.0, 45.0)),
    (ad.StudentTNoise(df=10.0), (-3000.0, 3000.0)),
    (ad.GeneralizedGaussianNoise(power=1.5), (-40.0, 40.0)),
    (ad.GeneralizedGaussianNoise(power=4.0), (-4.0, 4.0)),
]
IDS = ["gaussian", "laplace", "uniform", "gumbel", "exponential", "t10", "gg1.5", "gg4"]


def test_published_shape_constants():
    # The paper facts (../shared/papers/ngldm.md): skewness and excess kurtosis.
    assert ad.GumbelNoise().skewness == pytest.approx(1.1395, abs=1e-4)
    assert ad.GumbelNoise().excess_kurtosis == 2.4
    assert ad.StudentTNoise(df=7.0).excess_kurtosis == pytest.approx(2.0)
    assert math.isinf(ad.StudentTNoise(df=3.5).excess_kurtosis)
    # The generalised Gaussian is the Laplace at power 1 and the Gaussian at power 2.
    assert ad.GeneralizedGaussianNoise(power=1.0).excess_kurtosis == pytest.approx(3.0)
    assert ad.GeneralizedGaussianNoise(power=2.0).excess_kurtosis == pytest.approx(0.0, abs=1e-12)
    x = jnp.linspace(-3.0, 3.0, 13)
    np.testing.assert_allclose(
        ad.GeneralizedGaussianNoise(power=2.0).log_prob(x), ad.GaussianNoise().log_prob(x), 1e-6
    )
    np.testing.assert_allclose(
        ad.GeneralizedGaussianNoise(power=1.0).log_prob(x), ad.LaplaceNoise().log_prob(x), 1e-6
    )
    assert ad.GaussianNoise().is_gaussian and not ad.LaplaceNoise().is_gaussian


@pytest.mark.parametrize("noise,support", FAMILIES, ids=IDS)
def test_density_moments(noise, support):
    """The log-density integrates to 1 with mean 0, variance 1 and the stated skewness and
    excess kurtosis: the trapezoid rule on 400,001 points in float64 over the density evaluated
    in float32 (relative error ~1e-7). 2e-5 absolute on the mass, mean and variance; the third
    and fourth moments weight the rounding and the truncated tails by |x|^3 and x^4, so 2e-4
    and 2e-3 on them."""
    lo, hi = support
    # Densities with a kink or an edge (Laplace at 0, the uniform's and exponential's
    # edges) are integrated on grids that put a node there.
    if lo < 0 < hi:
        x = np.concatenate([np.linspace(lo, 0.0, 200_001), np.linspace(0.0, hi, 200_001)[1:]])
    else:
        x = np.linspace(lo, hi, 400_001)
    density = np.exp(np.asarray(noise.log_prob(jnp.asarray(x, jnp.float32)), np.float64))
    moments = [np.trapezoid(density * x**k, x) for k in range(5)]
    np.testing.assert_allclose(moments[0], 1.0, atol=2e-5)
    np.testing.assert_allclose(moments[1], 0.0, atol=2e-5)
    np.testing.assert_allclose(moments[2], 1.0, atol=2e-5)
    np.testing.assert_allclose(moments[3], noise.skewness, atol=2e-4)
    np.testing.assert_allclose(moments[4] - 3.0, noise.excess_kurtosis, atol=2e-3)


@pytest.mark.parametrize("noise,support", FAMILIES, ids=IDS)
def test_sample_moments(noise, support):
    """2^21 draws: each raw moment E[n^k], k = 1..4, within 5 standard errors (estimated
    from the draws) of its closed form; the draws stay in the support."""
    n = noise.sample(jax.random.key(0), (2**21,))
    assert n.shape == (2**21,) and n.dtype == jnp.float32
    draws = np.asarray(n, np.float64)
    assert support[0] <= draws.min() and draws.max() <= support[1]
    expected = [0.0, 1.0, noise.skewness, noise.excess_kurtosis + 3.0]
    for k, want in zip(range(1, 5), expected, strict=True):
        powers = draws**k
        stderr = powers.std() / math.sqrt(draws.size)
        assert abs(powers.mean() - want) < 5 * stderr, (k, powers.mean(), want, stderr)


def test_sampling_is_jittable_and_keyed():
    noise = ad.StudentTNoise(df=5.0)
    draw = jax.jit(lambda k: noise.sample(k, (3, 4)))
    a, b = draw(jax.random.key(1)), draw(jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, draw(jax.random.key(2)))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: ad.StudentTNoise(df=2.0), "df > 2"),
        (lambda: ad.GeneralizedGaussianNoise(power=0.0), "power > 0"),
    ],
)
def test_bad_shape_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()
