import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptive_diffusion as ad

from .helpers import marginal, random_mixture


class RampSchedule(ad.AbstractSchedule):
    """A per-dimension schedule for a (2, 3) state with different slopes."""

    def __call__(self, t):
        slopes = jnp.linspace(10.0, 20.0, 6).reshape(2, 3)
        return -12.0 + slopes * jnp.asarray(t) + 0.5 * jnp.sin(3 * jnp.asarray(t))


GFF = ad.GFFCovariance((1, 2, 3))
PROCESSES = {
    "VP-linear": (ad.VP(ad.LinearSchedule()), (2, 3)),
    "VP-cosine": (ad.VP(ad.CosineSchedule()), (2, 3)),
    "VP-learned": (ad.VP(ad.LearnedSchedule(key=jax.random.key(1))), (2, 3)),
    "DiagonalVP": (ad.DiagonalVP(RampSchedule()), (2, 3)),
    "NonIsotropicVP": (ad.NonIsotropicVP(ad.LinearSchedule(), GFF), (1, 2, 3)),
    # SMLD's geometric sigma_t from 0.01 to 20.
    "NonIsotropicVE": (
        ad.NonIsotropicVE(ad.LinearSchedule(2 * np.log(0.01), 2 * np.log(20.0)), GFF),
        (1, 2, 3),
    ),
}


def _dense(process, shape, t):
    """A_t, L_t L_t^T and the drift / diffusion matrices F_t, G_t G_t^T, read off the process."""
    d = int(np.prod(shape))
    zeros = jnp.zeros(d)

    def flat(fn):
        return lambda v: fn(v.reshape(shape)).reshape(-1)

    a = jax.jacfwd(flat(lambda u: process.perturb(u, t, jnp.zeros(shape))))(zeros)
    lin = jax.jacfwd(flat(lambda e: process.perturb(jnp.zeros(shape), t, e)))(zeros)
    f = jax.jacfwd(flat(lambda u: process.drift(u, t)))(zeros)
    u = jnp.zeros(shape)
    gg = jax.jacfwd(flat(lambda v: process.diffusion_covariance(u, t, v)))(zeros)
    g = jax.jacfwd(flat(lambda w: process.diffusion(u, t, w)))(zeros)
    return a, lin @ lin.T, f, gg, g


@pytest.mark.parametrize("name", PROCESSES)
def test_sde_generates_the_marginal(name):
    # For du = F u dt + G dW: dA/dt = F A and dP/dt = F P + P F^T + G G^T, P = L L^T.
    process, shape = PROCESSES[name]
    for t in (0.2, 0.5, 0.8):
        (a, p, f, gg, g), (da, dp, *_) = jax.jvp(
            lambda s: _dense(process, shape, s), (jnp.asarray(t),), (jnp.ones(()),)
        )
        np.testing.assert_allclose(da, f @ a, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(dp, f @ p + p @ f.T + gg, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(g @ g.T, gg, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", PROCESSES)
def test_score_eps_round_trip(name, getkey):
    process, shape = PROCESSES[name]
    u = jax.random.normal(getkey(), shape)
    eps = jax.random.normal(getkey(), shape)
    t = 0.37
    score = process.score_from_eps(u, t, eps)
    np.testing.assert_allclose(process.eps_from_score(u, t, score), eps, rtol=1e-5, atol=1e-6)
    # The score of q(u_t | u_0) at u_t = perturb(u_0, t, eps) is -L^{-T} eps.
    _, p, *_ = _dense(process, shape, t)
    u0 = jax.random.normal(getkey(), shape)
    ut = process.perturb(u0, t, eps)
    mean = process.perturb(u0, t, jnp.zeros(shape))
    exact = -jnp.linalg.solve(p, (ut - mean).reshape(-1)).reshape(shape)
    np.testing.assert_allclose(process.score_from_eps(ut, t, eps), exact, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", PROCESSES)
def test_parameterizations_agree(name, getkey):
    # Feed each parameterisation the exact target for the same (u_0, eps): all must
    # give the same eps and the same score.
    process, shape = PROCESSES[name]
    u0 = jax.random.uniform(getkey(), shape, minval=-1, maxval=1)
    t = 0.41
    ut, eps = process.sample_marginal(getkey(), u0, t)
    # The velocity of the unit-variance white coordinates alpha y_0 + sigma eps.
    alpha, sigma = ad.alpha_sigma(process.gamma(u0, t))
    outputs = {
        "eps": eps,
        "x": u0,
        "v": alpha * eps - sigma * process.covariance.inv_sqrt_apply(u0),
        "score": process.score_from_eps(ut, t, eps),
    }
    for name_, output in outputs.items():
        p = ad.score_fn(process, lambda u, s, o=output: o, name_)
        np.testing.assert_allclose(p(ut, t), outputs["score"], rtol=1e-4, atol=1e-4)
        param = p.parameterization
        np.testing.assert_allclose(
            param.to_eps(process, output, ut, t), eps, rtol=1e-4, atol=1e-4, err_msg=name_
        )


@pytest.mark.parametrize("name", PROCESSES)
def test_prior(name, getkey):
    process, shape = PROCESSES[name]
    u = process.prior_sample(getkey(), shape)
    assert u.shape == shape
    # N(0, p^2 Sigma): p = 1 for VP, sigma_1 for VE.
    variance = jnp.exp(process.log_prior_variance(process.gamma(u, 1.0)))
    variance = jnp.broadcast_to(variance, shape)
    root = process.covariance.sqrt_apply

    def column(e):
        return root(variance * root(e)).reshape(-1)

    cov = jax.vmap(column)(jnp.eye(u.size).reshape(-1, *shape))
    expected = jax.scipy.stats.multivariate_normal.logpdf(u.reshape(-1), jnp.zeros(u.size), cov)
    np.testing.assert_allclose(process.prior_log_prob(u), expected, rtol=1e-5)


def test_prior_kl_closed_form(getkey):
    # KL(N(alpha x, sigma^2) || N(0, 1)) per dimension, against the textbook formula.
    process = ad.VP(ad.LinearSchedule())
    x = jax.random.uniform(getkey(), (5,), minval=-1, maxval=1)
    alpha, sigma = process.scales(x, 1.0)
    expected = jnp.sum(0.5 * (sigma**2 + alpha**2 * x**2 - 1.0) - jnp.log(sigma))
    np.testing.assert_allclose(process.prior_kl(x), expected, rtol=1e-4, atol=1e-7)
    # VE: KL(N(x, sigma_1^2) || N(0, sigma_1^2)) = |x|^2 / (2 sigma_1^2).
    ve = ad.NonIsotropicVE(ad.LinearSchedule(-9.0, 4.0), ad.IdentityCovariance())
    np.testing.assert_allclose(ve.prior_kl(x), jnp.sum(x**2) / (2 * np.exp(4.0)), rtol=1e-5)


def test_marginal_samples_match_the_mixture_marginal(getkey):
    process, shape = PROCESSES["DiagonalVP"]
    data = random_mixture(getkey(), shape)
    x0 = jax.vmap(data.sample)(jax.random.split(getkey(), 20000))
    ut, _ = jax.vmap(lambda k, x: process.sample_marginal(k, x, 0.6))(
        jax.random.split(getkey(), 20000), x0
    )
    mean, cov = marginal(process, data, 0.6).mean_and_cov()
    # 20000 draws of unit-scale variables: standard error ~0.007; 5 SE.
    np.testing.assert_allclose(jnp.mean(ut, 0).reshape(-1), mean, atol=0.035)
    np.testing.assert_allclose(jnp.cov(ut.reshape(20000, -1).T), cov, atol=0.05)


def test_schedule_shape_errors():
    with pytest.raises(ValueError, match="DiagonalVP"):
        ad.VP(RampSchedule()).perturb(jnp.zeros((2, 3)), 0.5, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="one gamma per data dimension"):
        ad.DiagonalVP(RampSchedule()).perturb(jnp.zeros((3, 2)), 0.5, jnp.zeros((3, 2)))


@pytest.mark.parametrize("name", PROCESSES)
def test_marginal_log_prob_is_the_gaussian_density(name, getkey):
    process, shape = PROCESSES[name]
    u0 = jax.random.normal(getkey(), shape)
    t = 0.3
    ut, eps = process.sample_marginal(getkey(), u0, t)
    _, p, *_ = _dense(process, shape, t)
    mean = process.perturb(u0, t, jnp.zeros(shape)).reshape(-1)
    expected = jax.scipy.stats.multivariate_normal.logpdf(ut.reshape(-1), mean, p)
    np.testing.assert_allclose(process.marginal_log_prob(ut, t, eps), expected, rtol=1e-4)
