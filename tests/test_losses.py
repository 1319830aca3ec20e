import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptive_diffusion as ad

from .helpers import GaussianMixture, mixture_score


NUM_LEVELS = 8


def _discrete_data():
    """A distribution P over the 8 x 8 bins of [-1, 1]^2: a discretised correlated Gaussian."""
    k = jnp.arange(NUM_LEVELS)
    grid = jnp.stack(jnp.meshgrid(k, k, indexing="ij"), -1).reshape(-1, 2)
    points = ad.from_levels(grid, NUM_LEVELS)
    cov = jnp.array([[0.25, 0.15], [0.15, 0.3]])
    logits = -0.5 * jnp.sum(points @ jnp.linalg.inv(cov) * points, axis=-1)
    return points, jax.nn.log_softmax(logits)


def _optimal_eps_model(process, points, log_probs):
    """The exact eps-prediction E[eps | u_t] for the discrete data: -sigma_t * score."""
    atoms = GaussianMixture(log_probs, points, jnp.zeros((points.shape[0], 2, 2)), (2,))
    score = mixture_score(process, atoms)

    def model(u, t):
        return process.eps_from_score(u, t, score(u, t))

    return model


def _expected_bound(process, model, points, log_probs, key, num_samples, **kwargs):
    """E_P[NELBO] by exact enumeration of the data and Monte Carlo over (t, eps)."""

    def per_point(x, k):
        xs = jnp.broadcast_to(x, (num_samples, 2))
        return ad.batch_nelbo(process, model, xs, key=k, num_levels=NUM_LEVELS, **kwargs)

    keys = jax.random.split(key, points.shape[0])
    terms = jax.jit(jax.vmap(per_point))(points, keys)
    weights = jnp.exp(log_probs)
    means = jax.tree.map(lambda a: weights @ jnp.mean(a, axis=1), terms)
    var = weights**2 @ (jnp.var(terms.total, axis=1) / num_samples)
    return means, jnp.sqrt(var)


def test_bound_holds_for_the_optimal_denoiser(getkey):
    points, log_probs = _discrete_data()
    process = ad.VP(ad.LinearSchedule())
    model = _optimal_eps_model(process, points, log_probs)
    entropy_bpd = -jnp.sum(jnp.exp(log_probs) * log_probs) / (2 * math.log(2))
    bound, stderr = _expected_bound(process, model, points, log_probs, getkey(), 4096)
    # E_P[NELBO] >= H(P) for any model; the optimal denoiser makes it nearly tight.
    # The slack: 4 standard errors of the Monte Carlo mean (about 0.02 bits each with
    # 4096 draws per point; the heavy tail of the diffusion loss near the atoms' merge).
    assert bound.total >= entropy_bpd - 4 * stderr
    # And tight: the remaining gap is the prior KL (alpha_1^2 ~ 7e-3 nats) and the
    # decoder's overlap of neighbouring bins at sigma_0 = 1.3e-3 (negligible): 0.01 bits.
    assert bound.total - entropy_bpd < 0.01 + 4 * stderr
    np.testing.assert_allclose(
        bound.total, bound.diffusion + bound.prior + bound.reconstruction, rtol=1e-5
    )


@pytest.mark.slow
def test_dense_vlb_approaches_the_continuous_bound(getkey):
    points, log_probs = _discrete_data()
    process = ad.VP(ad.LinearSchedule())
    model = _optimal_eps_model(process, points, log_probs)
    x = points[27]
    continuous = ad.batch_nelbo(
        process, model, jnp.broadcast_to(x, (4096, 2)), key=getkey(), num_levels=NUM_LEVELS
    ).diffusion
    cont_mean = jnp.mean(continuous)
    cont_se = jnp.std(continuous) / math.sqrt(continuous.size)

    def dense(num_steps, key):
        return ad.dense_vlb(
            process, model, x, key=key, num_steps=num_steps, num_levels=NUM_LEVELS
        ).diffusion

    gaps = []
    for num_steps in (2, 8, 64, 512):
        draws = jax.jit(jax.vmap(lambda k, n=num_steps: dense(n, k)))(
            jax.random.split(getkey(), 32)
        )
        gaps.append(float(jnp.mean(draws) - cont_mean))
    # L_T decreases towards L_infinity as T grows (VDM section 4.1); at T = 512 the two
    # agree within 4 standard errors of the continuous-time Monte Carlo mean.
    assert gaps[0] > gaps[1] > gaps[2]
    assert abs(gaps[-1]) < 4 * cont_se + 1e-3


@pytest.mark.slow
def test_schedule_invariance_of_the_continuous_loss(getkey):
    # VDM eq. 18: L_infinity depends on the schedule only through its endpoints.
    points, log_probs = _discrete_data()
    x = points[35]
    losses = []
    for schedule in (ad.LinearSchedule(), ad.CosineSchedule()):
        process = ad.VP(schedule)
        model = _optimal_eps_model(process, points, log_probs)
        draws = ad.batch_nelbo(
            process, model, jnp.broadcast_to(x, (8192, 2)), key=getkey(), num_levels=NUM_LEVELS
        ).diffusion
        losses.append((jnp.mean(draws), jnp.var(draws) / draws.size))
    (m1, v1), (m2, v2) = losses
    # Equal within 4 standard errors of the difference of two independent estimates.
    assert abs(m1 - m2) < 4 * jnp.sqrt(v1 + v2)


def test_finite_t_bound_is_above_continuous(getkey):
    points, log_probs = _discrete_data()
    process = ad.VP(ad.LinearSchedule())
    model = _optimal_eps_model(process, points, log_probs)
    xs = jnp.broadcast_to(points[20], (4096, 2))
    kwargs = {"key": getkey(), "num_levels": NUM_LEVELS}
    cont = ad.batch_nelbo(process, model, xs, **kwargs).diffusion
    two = ad.batch_nelbo(process, model, xs, num_steps=2, **kwargs).diffusion
    # With T = 2 the discrete bound is far above the continuous one (many standard errors).
    assert jnp.mean(two) > jnp.mean(cont) + 10 * jnp.std(cont) / math.sqrt(cont.size)


def test_antithetic_times_cover_the_interval(getkey):
    t = ad.antithetic_times(getkey(), 16)
    gaps = jnp.diff(jnp.sort(t))
    np.testing.assert_allclose(gaps, 1 / 16, atol=1e-6)
    assert jnp.all((t >= 0) & (t < 1))


def test_likelihood_weighted_times_invert_their_cdf_and_weight_exactly():
    process = ad.CLD()  # t_min = 1e-3
    sampler = ad.LikelihoodWeightedTimes(0.1, 10.0)
    v = (jnp.arange(4096) + 0.5) / 4096
    unit, weight = jax.vmap(lambda u: sampler(process, None, u))(v)
    t = process.t_min + (1 - process.t_min) * unit
    low, high = sampler.log_weighting(process.t_min), sampler.log_weighting(1.0)
    # The closed-form inverse: rho(t(v)) is the CDF's target to float32 rounding of rho
    # (|rho| <= 10 here, so ~1e-6).
    np.testing.assert_allclose(
        jax.vmap(sampler.log_weighting)(t), low + v * (high - low), atol=5e-6
    )
    # The weight is the reciprocal density of the unit time, rho'(t) (1 - t_min) / (rho(1) -
    # rho(t_min)), with rho' by autodiff: their product is 1 up to rounding.
    rate = jax.vmap(jax.grad(sampler.log_weighting))(t)
    np.testing.assert_allclose(weight * rate * (1 - process.t_min) / (high - low), 1.0, rtol=2e-6)

    # Unbiased: the weighted midpoint rule over v integrates a smooth function with a 1/t
    # spike, to the quadrature's ~1e-6.
    def f(t):
        return jnp.sin(3 * t) + 1 / (t + 0.01)

    grid = np.linspace(process.t_min, 1.0, 200001)
    exact = np.trapezoid(np.sin(3 * grid) + 1 / (grid + 0.01), grid)
    np.testing.assert_allclose((1 - process.t_min) * jnp.mean(weight * f(t)), exact, rtol=2e-6)
    with pytest.raises(ValueError, match="t_min > 0"):
        sampler(ad.VP(ad.LinearSchedule()), None, 0.5)
    with pytest.raises(ValueError, match="continuous-time"):
        sampler.on_grid(process, None, 0.5, 10)
    with pytest.raises(ValueError, match="beta_min"):
        ad.LikelihoodWeightedTimes(0.0, 10.0)


@pytest.mark.parametrize(
    "x, message",
    [
        (jnp.array([0.1, 0.2]), "off the grid"),
        (jnp.array([1.5, 0.0625]), "outside"),
        (jnp.array([jnp.nan, 0.0625]), "NaN"),
    ],
)
def test_bad_data_raise(x, message, getkey):
    process = ad.VP(ad.LinearSchedule())

    def model(u, t):
        return jnp.zeros_like(u)

    # Eagerly, the per-example bound refuses bad data on the host; under jit the batch's
    # entry point checks it once, outside the vmapped bound (an equinox runtime error).
    with pytest.raises(ValueError, match=message):
        ad.nelbo(process, model, x, key=getkey(), num_levels=NUM_LEVELS)
    batch = jax.jit(lambda xs: ad.batch_nelbo(process, model, xs, key=getkey(), num_levels=16))
    with pytest.raises(Exception, match=message):
        batch(jnp.stack([x, x])).total.block_until_ready()


def test_unknown_parameterization_and_bad_steps(getkey):
    process = ad.VP(ad.LinearSchedule())
    x = ad.from_levels(jnp.array([1, 2]), NUM_LEVELS)

    def model(u, t):
        return u

    with pytest.raises(ValueError, match="Unknown parameterization"):
        ad.nelbo(process, model, x, key=getkey(), num_levels=NUM_LEVELS, parameterization="y")
    with pytest.raises(ValueError, match="num_steps"):
        ad.nelbo(process, model, x, key=getkey(), num_levels=NUM_LEVELS, num_steps=0)
