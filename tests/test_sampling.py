import diffrax
import jax
import jax.numpy as jnp
import pytest

import adaptive_diffusion as ad

from .helpers import marginal, mixture_score, random_mixture


NUM_SAMPLES = 4000

ADAPTIVE = ad.ODESolve(stepsize_controller=diffrax.PIDController(rtol=1e-4, atol=1e-4))
FIXED = ad.ODESolve(stepsize_controller=diffrax.ConstantStepSize(), dt0=0.01)
SAMPLERS = {
    "ode-adaptive": lambda p, s, k: ad.sample_ode(p, s, k, (2,), solve=ADAPTIVE),
    "ode-fixed": lambda p, s, k: ad.sample_ode(p, s, k, (2,), solve=FIXED),
    "sde-euler": lambda p, s, k: ad.sample_sde(p, s, k, (2,), num_steps=500),
    "sde-shark": lambda p, s, k: ad.sample_sde(
        p, s, k, (2,), solver=diffrax.ShARK(), num_steps=100
    ),
    "ancestral": lambda p, s, k: ad.sample_ancestral(p, s, k, (2,), num_steps=500),
    "ddim": lambda p, s, k: ad.sample_ddim(p, s, k, (2,), num_steps=100),
}


@pytest.fixture(scope="module")
def problem():
    # gamma_max = 12: the prior matches p_1 (alpha_1 = 2.5e-3), so the samplers' only
    # errors are discretisation and Monte Carlo.
    process = ad.VP(ad.LinearSchedule(gamma_min=-10.0, gamma_max=12.0))
    data = random_mixture(jax.random.key(3), (2,), scale=0.4)
    return process, data, mixture_score(process, data)


@pytest.mark.parametrize("name", SAMPLERS)
def test_sampler_reproduces_mean_and_covariance(name, problem, getkey):
    process, data, score = problem
    sampler = SAMPLERS[name]
    samples = jax.jit(jax.vmap(lambda k: sampler(process, score, k)))(
        jax.random.split(getkey(), NUM_SAMPLES)
    )
    mean, cov = marginal(process, data, 0.0).mean_and_cov()
    sd = jnp.sqrt(jnp.diag(cov))
    # Monte Carlo standard errors: sd/sqrt(N) for the mean and, for a covariance entry,
    # sqrt((S_ii S_jj + S_ij^2)/N) (Gaussian approximation). Allow 5 of them plus a small
    # discretisation allowance of 0.01 (first-order samplers at 100-500 steps).
    mean_tol = 5 * sd / jnp.sqrt(NUM_SAMPLES) + 0.01
    cov_tol = 5 * jnp.sqrt((jnp.outer(sd**2, sd**2) + cov**2) / NUM_SAMPLES) + 0.01
    assert jnp.all(jnp.abs(jnp.mean(samples, 0) - mean) < mean_tol), name
    assert jnp.all(jnp.abs(jnp.cov(samples.T) - cov) < cov_tol), name


def test_wrong_score_is_detected(problem, getkey):
    # The same check must fail for a sampler given a wrong score (a negative control).
    process, data, score = problem

    def shrunk(u, t):
        return 1.5 * score(u, t)

    samples = jax.jit(jax.vmap(lambda k: ad.sample_ode(process, shrunk, k, (2,), solve=ADAPTIVE)))(
        jax.random.split(getkey(), NUM_SAMPLES)
    )
    _, cov = marginal(process, data, 0.0).mean_and_cov()
    assert jnp.max(jnp.abs(jnp.cov(samples.T) - cov)) > 0.02
