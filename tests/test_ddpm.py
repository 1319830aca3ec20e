"""DDPM with a pluggable noise family: marginals, samplers, the loss, and what it refuses."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptive_diffusion as ad

from .helpers import mixture_score, random_mixture


BETAS = ad.linear_betas(1000)


def _alpha_bar(betas) -> np.ndarray:
    return np.cumprod(1.0 - np.asarray(betas, np.float64))


@pytest.mark.parametrize("noise", [ad.GaussianNoise(), ad.LaplaceNoise(), ad.ExponentialNoise()])
def test_marginal_is_the_closed_form(noise, getkey):
    """x_i = sqrt(abar_i) x_0 + sqrt(1 - abar_i) n at t_i = (i - 1)/(T - 1), abar from
    float64 products; float32 rounding of the scales is ~1e-6 relative."""
    process = ad.DDPM(BETAS, noise)
    abar = _alpha_bar(BETAS)
    x0 = jax.random.uniform(getkey(), (3, 4), minval=-1.0, maxval=1.0)
    n = noise.sample(getkey(), x0.shape)
    for i in (1, 2, 10, 500, 999, 1000):
        t = (i - 1) / 999
        want = math.sqrt(abar[i - 1]) * np.asarray(x0) + math.sqrt(1 - abar[i - 1]) * np.asarray(n)
        np.testing.assert_allclose(process.perturb(x0, t, n), want, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(
            process.x0_from_eps(process.perturb(x0, t, n), t, n), x0, atol=2e-3 if i > 900 else 1e-4
        )
    # sample_marginal draws the family's noise: its excess kurtosis, over many elements.
    draws = jax.vmap(lambda k: process.sample_marginal(k, x0, 0.5)[1])(
        jax.random.split(getkey(), 20_000)
    )
    centred = np.asarray(draws, np.float64).reshape(-1)
    kurtosis = np.mean(centred**4) / np.mean(centred**2) ** 2 - 3
    assert abs(kurtosis - noise.excess_kurtosis) < 0.15


def test_gaussian_ddpm_is_vp_with_beta_schedule(getkey):
    """Same marginals and the same noise stream as `VP(BetaSchedule(betas))`."""
    process = ad.DDPM(BETAS)
    vp = process.as_vp()
    x0 = jax.random.uniform(getkey(), (5,), minval=-1.0, maxval=1.0)
    key = getkey()
    for t in (0.0, 0.3, 1.0):
        ours, theirs = process.sample_marginal(key, x0, t), vp.sample_marginal(key, x0, t)
        np.testing.assert_array_equal(ours[0], theirs[0])
        np.testing.assert_array_equal(ours[1], theirs[1])


def test_cosine_betas_closed_form():
    betas = ad.cosine_betas(100)
    f = np.cos((np.arange(101) / 100 + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(_alpha_bar(betas)[:90], (f[1:] / f[0])[:90], rtol=1e-5)
    assert float(betas.max()) <= np.float32(0.999)


def _eps_model(process, score):
    # The exact noise prediction of a Gaussian process: -L_t^T grad log p_t = -s_t score.
    return lambda u, t: -process.marginal_scale(u, t, score(u, t))


NUM_SAMPLES = 4000


@pytest.mark.parametrize("sampler", ["ancestral", "ancestral-beta", "ddim"])
def test_samplers_with_exact_noise_predictor_reproduce_mixture(sampler, getkey):
    """DDPM's own sampler (T - 1 = 999 steps, noiseless last step) and DDIM (99 steps) with
    the exact eps of a Gaussian mixture: mean and covariance within 5 Monte Carlo standard
    errors plus 0.01 (first-order discretisation; abar_T = 4e-5, so the prior is exact to
    that)."""
    process = ad.DDPM(BETAS)
    data = random_mixture(jax.random.key(3), (2,), scale=0.4)
    model = ad.score_fn(process, _eps_model(process, mixture_score(process, data)))
    draw = {
        "ancestral": lambda k: ad.sample_ancestral(
            process, model, k, (2,), num_steps=999, denoise=True
        ),
        "ancestral-beta": lambda k: ad.sample_ancestral(
            process, model, k, (2,), num_steps=999, variance=ad.BetaVariance(), denoise=True
        ),
        "ddim": lambda k: ad.sample_ddim(process, model, k, (2,), num_steps=99, denoise=True),
    }[sampler]
    samples = jax.jit(jax.vmap(draw))(jax.random.split(getkey(), NUM_SAMPLES))
    mean, cov = data.mean_and_cov()
    sd = jnp.sqrt(jnp.diag(cov))
    mean_tol = 5 * sd / math.sqrt(NUM_SAMPLES) + 0.01
    cov_tol = 5 * jnp.sqrt((jnp.outer(sd**2, sd**2) + cov**2) / NUM_SAMPLES) + 0.01
    assert jnp.all(jnp.abs(jnp.mean(samples, 0) - mean) < mean_tol)
    assert jnp.all(jnp.abs(jnp.cov(samples.T) - cov) < cov_tol)


def test_ancestral_steps_draw_the_family_noise(getkey):
    """For a point mass at c the exact noise prediction is (x_t - a_t c)/s_t for any
    family, so the sampler's state before the last step is a_1 c plus a linear combination
    of the family's draws: skewed for Exponential noise, symmetric for Gaussian."""
    c = 0.3

    def skewness(noise):
        process = ad.DDPM(ad.linear_betas(50), noise)

        def eps(u, t):
            a, s = process.as_vp().scales(u, t)
            return (u - a * c) / s

        model = ad.score_fn(process, eps)
        draws = jax.jit(
            jax.vmap(lambda k: ad.sample_ancestral(process, model, k, (1,), num_steps=49))
        )(jax.random.split(getkey(), 40_000))
        d = np.asarray(draws, np.float64).reshape(-1)
        d = d - d.mean()
        return np.mean(d**3) / np.mean(d**2) ** 1.5

    # Third cumulant 2 sum w_k^3 / (sum w_k^2)^1.5 > 0.3 here; the Gaussian's standard
    # error at 40,000 draws is sqrt(6/40000) = 0.012.
    assert skewness(ad.ExponentialNoise()) > 0.3
    assert abs(skewness(ad.GaussianNoise())) < 0.06


def test_denoising_loss_and_step_times(getkey):
    process = ad.DDPM(ad.linear_betas(10), ad.LaplaceNoise())
    x = jnp.full((4,), 0.3)

    def exact(u, t):
        a, s = process.as_vp().scales(u, t)
        return (u - a * x) / s

    times = ad.StepTimes(10)
    loss = ad.denoising_loss(process, exact, x, key=getkey(), times=times)
    assert float(loss) < 1e-8
    loss = ad.denoising_loss(process, lambda u, t: jnp.zeros_like(u), x, key=getkey(), times=times)
    assert float(loss) > 0.0
    units = jax.vmap(lambda v: times(process, x, v)[0])(jnp.linspace(0.0, 0.9999, 1000))
    np.testing.assert_allclose(np.unique(np.asarray(units)), np.arange(10) / 9, atol=1e-7)
    counts = np.unique(np.round(np.asarray(units) * 9), return_counts=True)[1]
    assert np.all(counts == 100)  # each of the T steps equally often


def test_non_gaussian_ddpm_has_no_likelihood(getkey):
    process = ad.DDPM(BETAS, ad.LaplaceNoise())
    x = ad.bin_centres(4)[jnp.array([0, 1, 2, 3])]

    def net(u, t):
        return jnp.zeros_like(u)

    with pytest.raises(TypeError, match="AbstractLinearGaussianProcess"):
        ad.nelbo(process, net, x, key=getkey(), num_levels=4)
    with pytest.raises(TypeError, match="AbstractSDEProcess"):
        ad.ode_log_likelihood(process, ad.score_fn(process, net), x, key=getkey())
    with pytest.raises(TypeError, match="score"):
        ad.score_fn(process, net)(x, 0.5)
    with pytest.raises(TypeError, match="AbstractLinearGaussianProcess"):
        ad.sample_annealed_langevin(process, ad.score_fn(process, net), getkey(), (4,))
