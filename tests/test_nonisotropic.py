import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptive_diffusion as ad

from .helpers import GaussianMixture, marginal, mixture_score, random_mixture
from .test_processes import _dense


def _ve_schedule(sigma_min, sigma_max):
    """SMLD's geometric sigma_t = sigma_min (sigma_max / sigma_min)^t as gamma = log sigma^2."""
    return ad.LinearSchedule(2 * math.log(sigma_min), 2 * math.log(sigma_max))


def _ddpm_betas(num):
    """Ho et al.'s linear betas, rescaled to `num` steps (the same sum, alpha_bar_T ~ 4e-5)."""
    return jnp.linspace(1e-4, 0.02, num) * 1000 / num


# name: (build from a covariance, (alpha_t, sigma_t) of u_t = alpha_t u_0 + sigma_t Sigma^{1/2}
# eps, the prior's scale: N(0, scale^2 Sigma)).
PROCESSES = {
    "NonIsotropicVP": (
        lambda cov: ad.NonIsotropicVP(ad.LinearSchedule(), cov),
        lambda p, t, x: p.scales(x, t),
        1.0,
    ),
    "NonIsotropicVE": (
        lambda cov: ad.NonIsotropicVE(_ve_schedule(0.01, 10.0), cov),
        lambda p, t, x: p.scales(x, t),
        10.0,
    ),
}
SHAPE = (1, 4, 4)


@pytest.mark.parametrize("name", PROCESSES)
def test_sde_generates_the_marginal(name):
    # u_t = alpha_t u_0 + sigma_t Sigma^{1/2} eps, and for du = F u dt + G dW:
    # dA/dt = F A, dP/dt = F P + P F^T + G G^T (P = L L^T), G G^T = g^2 Sigma.
    make, coefficients, _ = PROCESSES[name]
    cov = ad.GFFCovariance(SHAPE, power=1.0)
    process = make(cov)
    sigma_matrix = cov.as_matrix()

    @jax.jit
    def dense_and_derivative(t):
        return jax.jvp(lambda s: _dense(process, SHAPE, s), (t,), (jnp.ones(()),))

    for t in (0.2, 0.5, 0.8):
        (a, p, f, gg, g), (da, dp, *_) = dense_and_derivative(jnp.asarray(t))
        alpha, sigma = coefficients(process, t, jnp.zeros(SHAPE))
        np.testing.assert_allclose(a, alpha * jnp.eye(a.shape[0]), atol=1e-6)
        np.testing.assert_allclose(p, sigma**2 * sigma_matrix, rtol=1e-5, atol=1e-6 * sigma**2)
        np.testing.assert_allclose(da, f @ a, rtol=1e-4, atol=1e-6)
        # dP/dt is a difference of terms of size |G G^T|: round-off relative to those.
        np.testing.assert_allclose(dp, f @ p + p @ f.T + gg, rtol=1e-4, atol=1e-5 * jnp.max(gg))
        np.testing.assert_allclose(g @ g.T, gg, rtol=1e-4, atol=1e-6 * jnp.max(gg))
        np.testing.assert_allclose(gg, gg[0, 0] * sigma_matrix, rtol=1e-4, atol=1e-6 * gg[0, 0])


def _gaussian_kl(m1, s1, s2):
    """KL(N(m1, s1) || N(0, s2)) in nats, dense."""
    n = m1.size
    solve = jnp.linalg.solve(s2, s1)
    return 0.5 * (
        jnp.trace(solve)
        + m1 @ jnp.linalg.solve(s2, m1)
        - n
        + jnp.linalg.slogdet(s2)[1]
        - jnp.linalg.slogdet(s1)[1]
    )


@pytest.mark.parametrize("name", PROCESSES)
def test_scores_and_densities_against_dense(name, getkey):
    make, coefficients, _ = PROCESSES[name]
    cov = ad.GFFCovariance(SHAPE, power=1.0)
    process = make(cov)
    sigma_matrix = cov.as_matrix()
    u0 = jax.random.uniform(getkey(), SHAPE, minval=-1, maxval=1)
    eps = jax.random.normal(getkey(), SHAPE)
    t = 0.37

    @jax.jit
    def quantities(u0, eps):
        ut = process.perturb(u0, t, eps)
        score = process.score_from_eps(ut, t, eps)
        return (
            ut,
            score,
            process.eps_from_score(ut, t, score),
            process.marginal_log_prob(ut, t, eps),
            process.prior_log_prob(ut),
            process.prior_kl(u0),
            process.prior_sample(jax.random.key(0), SHAPE),
        )

    ut, score, eps_back, log_q, log_prior, kl, draw = quantities(u0, eps)
    alpha, sigma = coefficients(process, t, u0)
    mean, p = (alpha * u0).reshape(-1), sigma**2 * sigma_matrix
    # score = -Sigma^{-1/2} eps / sigma_t = -P^{-1} (u_t - alpha u_0): the paper's eq. 11.
    exact = -jnp.linalg.solve(p, ut.reshape(-1) - mean)
    np.testing.assert_allclose(score.reshape(-1), exact, rtol=1e-4, atol=1e-4 * jnp.max(exact))
    np.testing.assert_allclose(eps_back, eps, rtol=1e-4, atol=1e-5)
    mvn = jax.scipy.stats.multivariate_normal.logpdf
    np.testing.assert_allclose(log_q, mvn(ut.reshape(-1), mean, p), rtol=1e-4)
    # The prior N(0, sigma_1^2 Sigma) (sigma_1 = 1 for VP), with its log-determinant, and the
    # prior KL against KL(N(alpha_1 u_0, sigma_1^2 Sigma) || prior).
    alpha_1, sigma_1 = coefficients(process, 1.0, u0)
    prior_cov = PROCESSES[name][2] ** 2 * sigma_matrix
    np.testing.assert_allclose(log_prior, mvn(ut.reshape(-1), jnp.zeros(16), prior_cov), rtol=1e-5)
    expected_kl = _gaussian_kl((alpha_1 * u0).reshape(-1), sigma_1**2 * sigma_matrix, prior_cov)
    # The dense KL is a float32 sum of O(n) terms that nearly cancel: 2e-3 relative.
    np.testing.assert_allclose(kl, expected_kl, rtol=2e-3, atol=1e-5)
    assert draw.shape == SHAPE


def _white_mixture(data, w):
    """The law of Sigma^{-1/2} x for x ~ data, with w = Sigma^{-1/2} dense."""
    covs = jnp.einsum("ij,kjl,ml->kim", w, data.covs, w)
    return GaussianMixture(data.log_weights, data.means @ w.T, covs, data.shape)


@pytest.mark.slow
def test_ode_likelihood_and_whitening_identity(getkey):
    # gamma_max = 20: the prior matches p_1 to alpha_1 = 4.5e-5 (see test_likelihood.py).
    shape = (1, 2, 2)
    cov = ad.GFFCovariance(shape, power=1.0)
    schedule = ad.LinearSchedule(gamma_min=-13.3, gamma_max=20.0)
    ni = ad.NonIsotropicVP(schedule, cov)
    vp = ad.VP(schedule)
    data = random_mixture(getkey(), shape)
    w = jax.vmap(lambda e: cov.inv_sqrt_apply(e.reshape(shape)).reshape(-1))(jnp.eye(4)).T
    white = _white_mixture(data, w)
    xs = jax.vmap(data.sample)(jax.random.split(getkey(), 4))

    @jax.jit
    @jax.vmap
    def log_probs(x):
        def ode(process, mixture, u):
            score = mixture_score(process, mixture)
            return ad.ode_log_likelihood(process, score, u, key=jax.random.key(0), trace="exact")

        p_ni = ode(ni, data, x).log_prob
        p_vp = ode(vp, white, cov.inv_sqrt_apply(x)).log_prob
        return p_ni, p_vp, marginal(ni, data, 0.0).log_prob(x)

    p_ni, p_vp, exact = log_probs(xs)
    # The exact score makes the ODE density the process's own p_0, to the solver's ~1e-4
    # nats at rtol = atol = 1e-5: the 1e-3 nats.
    np.testing.assert_allclose(p_ni, exact, atol=1e-3)
    # log p_NI(x) = log p_VP(Sigma^{-1/2} x) - 0.5 logdet Sigma: two independent solves.
    np.testing.assert_allclose(p_ni, p_vp - 0.5 * cov.logdet(), atol=1e-3)


NUM_LEVELS = 4


@pytest.mark.slow
def test_bound_holds_for_the_optimal_denoiser(getkey):
    # A distribution P over the 4 x 4 bins of [-1, 1]^2 as (1, 1, 2) images, and a covariance
    # with Sigma = [[1, 0.5], [0.5, 1]]: E_P[NELBO] >= H(P), nearly tight for the denoiser
    # that is exact for P's marginals (as tests/test_losses.py does for VP).
    shape = (1, 1, 2)
    k = jnp.arange(NUM_LEVELS)
    grid = jnp.stack(jnp.meshgrid(k, k, indexing="ij"), -1).reshape(-1, 2)
    points = ad.from_levels(grid, NUM_LEVELS)
    precision = jnp.linalg.inv(jnp.array([[0.3, 0.2], [0.2, 0.3]]))
    log_probs = jax.nn.log_softmax(-0.5 * jnp.sum(points @ precision * points, 1))
    cov = ad.SpectralCovariance(shape, jnp.array([[3.0, 1.0]]))
    np.testing.assert_allclose(cov.as_matrix(), [[1.0, 0.5], [0.5, 1.0]], atol=1e-6)
    processes = {
        "NonIsotropicVP": ad.NonIsotropicVP(ad.LinearSchedule(), cov),
        "NonIsotropicVE": ad.NonIsotropicVE(_ve_schedule(1e-3, 100.0), cov),
    }
    atoms = GaussianMixture(log_probs, points, jnp.zeros((points.shape[0], 2, 2)), shape)
    num_samples = 1024

    @jax.jit
    def per_process(process, key):
        score = mixture_score(process, atoms)

        def model(u, t):
            return process.eps_from_score(u, t, score(u, t))

        def per_point(x, key):
            xs = jnp.broadcast_to(x.reshape(shape), (num_samples, *shape))
            nelbo = ad.batch_nelbo(process, model, xs, key=key, num_levels=NUM_LEVELS)
            return nelbo.total

        return jax.vmap(per_point)(points, jax.random.split(key, points.shape[0]))

    # One jit per process: in one program, the two processes' large batched triangular
    # solves (the mixture's log-density) ran concurrently and deadlocked XLA:CPU's two
    # worker threads inside jaxlib 0.10.2's LAPACK kernel, which waits on its own pool
    # (reproduced without equinox; no host callback is involved).
    def bounds(key):
        keys = jax.random.split(key, len(processes))
        return {name: per_process(p, k) for (name, p), k in zip(processes.items(), keys)}

    weights = jnp.exp(log_probs)
    entropy_bpd = -jnp.sum(weights * log_probs) / (2 * math.log(2))
    for name, totals in bounds(getkey()).items():
        total = weights @ jnp.mean(totals, axis=1)
        stderr = jnp.sqrt(weights**2 @ (jnp.var(totals, axis=1) / num_samples))
        # A bound, within 4 Monte Carlo standard errors; and tight: the rest is the prior
        # KL (alpha_1^2 ~ 7e-3 nats for VP, |x|^2 / (2 sigma_1^2) ~ 1e-4 for VE) and the
        # decoder's overlap of neighbouring bins at sigma_0 ~ 1e-3 (negligible): 0.01 bits.
        assert total >= entropy_bpd - 4 * stderr, name
        assert total - entropy_bpd < 0.01 + 4 * stderr, name


# The samplers with the exact score of a mixture's marginals (tests/helpers.py) must
# reproduce the mixture's mean and covariance at t = 0. All in one compiled program: on
# XLA:CPU compiling them costs far more than running them.
NUM_SAMPLES = 2000


def _samplers(cov):
    shape = cov.shape
    ni_ddpm = ad.NonIsotropicVP(ad.BetaSchedule(_ddpm_betas(251)), cov)
    nivp = ad.NonIsotropicVP(ad.LinearSchedule(gamma_min=-10.0, gamma_max=12.0), cov)
    ni_smld = ad.NonIsotropicVE(_ve_schedule(0.01, 3.0), cov)
    return {
        # NI-DDPM, eq. 18: the beta schedule on its own grid, with the final denoising step.
        "ni-ddpm-eq18": (
            ni_ddpm,
            lambda s, k: ad.sample_ancestral(ni_ddpm, s, k, shape, num_steps=250, denoise=True),
        ),
        # Eq. 19: variance beta_t in place of the posterior's.
        "ni-ddpm-eq19": (
            ni_ddpm,
            lambda s, k: ad.sample_ancestral(
                ni_ddpm, s, k, shape, num_steps=250, variance=ad.BetaVariance(), denoise=True
            ),
        ),
        # DDIM, eqs. 20-21, on every other step of the same grid.
        "ni-ddim": (
            ni_ddpm,
            lambda s, k: ad.sample_ddim(ni_ddpm, s, k, shape, num_steps=125, denoise=True),
        ),
        # The NIVP reverse SDE (eq. 24) through diffrax.
        "nivp-sde": (
            nivp,
            lambda s, k: ad.sample_sde(nivp, s, k, shape, solver=diffrax.ShARK(), num_steps=25),
        ),
        # NI-SMLD: annealed Langevin over the VE process's noise levels, SMLD's step
        # epsilon = 1e-4 at sigma_L = 0.01, i.e. 1.0 relative to the last level's variance.
        "ni-smld": (
            ni_smld,
            lambda s, k: ad.sample_annealed_langevin(
                ni_smld, s, k, shape, num_noise_levels=10, num_inner=50, step_size=1.0, denoise=True
            ),
        ),
    }


@pytest.mark.slow
def test_samplers_reproduce_mean_and_covariance(getkey):
    shape = (1, 2, 2)
    samplers = _samplers(ad.GFFCovariance(shape, power=1.0))
    data = random_mixture(jax.random.key(3), shape, scale=0.4)

    @jax.jit
    @jax.vmap
    def draw(key):
        keys = jax.random.split(key, len(samplers))
        return {
            name: sampler(mixture_score(process, data), k).reshape(-1)
            for (name, (process, sampler)), k in zip(samplers.items(), keys)
        }

    mean, cov = data.mean_and_cov()
    sd = jnp.sqrt(jnp.diag(cov))
    # As tests/test_sampling.py: 5 Monte Carlo standard errors (sd / sqrt(N) for a mean,
    # sqrt((S_ii S_jj + S_ij^2) / N) for a covariance entry) plus 0.01 for discretisation.
    mean_tol = 5 * sd / math.sqrt(NUM_SAMPLES) + 0.01
    cov_tol = 5 * jnp.sqrt((jnp.outer(sd**2, sd**2) + cov**2) / NUM_SAMPLES) + 0.01
    for name, samples in draw(jax.random.split(getkey(), NUM_SAMPLES)).items():
        np.testing.assert_array_less(jnp.abs(jnp.mean(samples, 0) - mean), mean_tol, name)
        np.testing.assert_array_less(jnp.abs(jnp.cov(samples.T) - cov), cov_tol, name)


def test_samplers_are_ni_ddpm_exactly(getkey):
    # NI-DDPM written out with alpha_bar (the paper's eqs. 17-23), against the VDM-form
    # samplers on BetaSchedule's grid, with the same noise draws.
    num = 5
    betas = jnp.linspace(0.05, 0.4, num)
    alpha_bar = jnp.cumprod(1.0 - betas)
    cov = ad.GFFCovariance((1, 4, 4), power=1.0)
    process = ad.NonIsotropicVP(ad.BetaSchedule(betas), cov)

    def eps_model(x, t):
        return jnp.tanh(x + t) * (1.0 + t)

    def score(u, t):
        return process.score_from_eps(u, t, eps_model(u, t))

    def x0_hat(x, i, t):  # eq. 17
        ab = alpha_bar[i - 1]
        return (x - jnp.sqrt(1 - ab) * cov.sqrt_apply(eps_model(x, t))) / jnp.sqrt(ab)

    def paper(variant, key):
        if variant == "ddim":
            x = cov.sqrt_apply(jax.random.normal(key, cov.shape))
            keys = [None] * (num - 1)
        else:
            key_prior, key_steps = jax.random.split(key)
            x = cov.sqrt_apply(jax.random.normal(key_prior, cov.shape))
            keys = list(jax.random.split(key_steps, num - 1))
        for i, k in zip(range(num, 1, -1), keys):  # DDPM's x_i -> x_{i-1}, i = T..2
            t = (i - 1) / (num - 1)
            beta, ab, ab_prev = betas[i - 1], alpha_bar[i - 1], alpha_bar[i - 2]
            x0 = x0_hat(x, i, t)
            if variant == "ddim":  # eqs. 20-21
                eps = eps_model(x, t)
                x = jnp.sqrt(ab_prev) * x0 + jnp.sqrt(1 - ab_prev) * cov.sqrt_apply(eps)
                continue
            mu = (
                jnp.sqrt(ab_prev) * beta / (1 - ab) * x0
                + jnp.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab) * x
            )
            var = (1 - ab_prev) / (1 - ab) * beta if variant == "eq18" else beta
            x = mu + jnp.sqrt(var) * cov.sqrt_apply(jax.random.normal(k, cov.shape))
        # i = 1: beta_tilde_1 = 0, and DDPM adds no noise at its last step: x_0 = x0_hat
        # (eq. 23), at t = 0.
        return x0_hat(x, 1, 0.0)

    @jax.jit
    def ours_and_paper(key):
        kwargs = {"num_steps": num - 1, "denoise": True}
        ours = {
            "eq18": ad.sample_ancestral(process, score, key, cov.shape, **kwargs),
            "eq19": ad.sample_ancestral(
                process, score, key, cov.shape, variance=ad.BetaVariance(), **kwargs
            ),
            "ddim": ad.sample_ddim(process, score, key, cov.shape, **kwargs),
        }
        return ours, {variant: paper(variant, key) for variant in ours}

    ours, expected = ours_and_paper(getkey())
    for variant in ours:
        np.testing.assert_allclose(ours[variant], expected[variant], rtol=1e-4, atol=1e-4)


def test_beta_schedule_grid():
    betas = np.linspace(1e-4, 0.02, 100)
    schedule = ad.BetaSchedule(jnp.asarray(betas))
    # The grid t_i = (i - 1) / (T - 1) and a midpoint between its first two nodes.
    t = np.concatenate([np.arange(100) / 99, [0.5 / 99]])
    gamma = np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(t)), dtype=np.float64)
    grid, mid = gamma[:-1], gamma[-1]
    # alpha_{t_i}^2 = alpha_bar_i, finite and increasing, and linear in between.
    np.testing.assert_allclose(1 / (1 + np.exp(grid)), np.cumprod(1 - betas), rtol=1e-5)
    assert np.all(np.isfinite(grid)) and np.all(np.diff(grid) > 0)
    np.testing.assert_allclose(mid, 0.5 * (grid[0] + grid[1]), rtol=1e-5)


class PerPixelSchedule(ad.AbstractSchedule):
    def __call__(self, t):
        return jnp.linspace(-5.0, 5.0, 4).reshape(1, 2, 2) * jnp.asarray(t)


def test_bad_arguments():
    cov = ad.GFFCovariance((1, 2, 2), power=1.0)
    per_pixel = PerPixelSchedule()
    x = jnp.zeros(cov.shape)
    with pytest.raises(ValueError, match="scalar schedule"):
        ad.NonIsotropicVP(per_pixel, cov).perturb(x, 0.5, x)
    with pytest.raises(ValueError, match="scalar schedule"):
        ad.NonIsotropicVE(per_pixel, cov).perturb(x, 0.5, x)
    process = ad.NonIsotropicVP(ad.LinearSchedule(), cov)
    with pytest.raises(ValueError, match="num_noise_levels"):
        ad.sample_annealed_langevin(
            process, lambda u, t: -u, jax.random.key(0), x.shape, num_noise_levels=1
        )
    for betas, message in [
        ([0.1, 1.0], r"\(0, 1\)"),
        ([0.0, 0.1], r"\(0, 1\)"),
        ([0.1], "at least 2"),
    ]:
        with pytest.raises(ValueError, match=message):
            ad.BetaSchedule(jnp.array(betas))
