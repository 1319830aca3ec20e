import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptive_diffusion as ad

from .helpers import GaussianMixture, marginal, mixture_score, random_mixture


# The ODE result is exact for the model whose p_1 is the prior N(0, I); p_1 itself differs
# from it by a shift of alpha_1 * mean, so log p differs to first order in alpha_1.
# gamma_max = 20 makes alpha_1 = 4.5e-5, far below the 1e-3 nats the test asks for
# (at VDM's gamma_max = 5, alpha_1 = 0.08 would dominate the comparison).
def _processes():
    linear = ad.LinearSchedule(gamma_min=-13.3, gamma_max=20.0)
    return {
        "VP": ad.VP(linear),
        "DiagonalVP": ad.DiagonalVP(PerDimensionLinear()),
    }


class PerDimensionLinear(ad.AbstractSchedule):
    """gamma_i(t) = gamma_min + (gamma_max_i - gamma_min) t with a different end per dimension."""

    def __call__(self, t):
        gamma_max = jnp.array([[18.0, 19.0], [20.0, 21.0]])
        return -13.3 + (gamma_max + 13.3) * jnp.asarray(t)


@pytest.mark.parametrize("name", ["VP", "DiagonalVP"])
def test_exact_trace_matches_analytic_density(name, getkey):
    process = _processes()[name]
    data = random_mixture(getkey(), (2, 2))
    score = mixture_score(process, data)
    p0 = marginal(process, data, 0.0)
    xs = jax.vmap(data.sample)(jax.random.split(getkey(), 8))

    @jax.jit
    @jax.vmap
    def log_prob(x):
        return ad.ode_log_likelihood(process, score, x, key=getkey(), trace="exact")

    result = log_prob(xs)
    expected = jax.vmap(p0.log_prob)(xs)
    # Adaptive Tsit5 at rtol = atol = 1e-5 in float32: the 1e-3 nats target.
    np.testing.assert_allclose(result.log_prob, expected, atol=1e-3)
    assert jnp.all(result.nfe > 0)
    # Every example keeps its own adaptive steps under vmap.
    assert len(np.unique(result.nfe)) > 1


# Each probe and each product once (the four pairs share all their code).
@pytest.mark.parametrize("probe, mode", [("rademacher", "jvp"), ("gaussian", "vjp")])
def test_hutchinson_is_unbiased(probe, mode, getkey):
    process = _processes()["VP"]
    data = random_mixture(getkey(), (4,))
    score = mixture_score(process, data)
    x = data.sample(getkey())
    exact = ad.ode_log_likelihood(process, score, x, key=getkey(), trace="exact").log_prob
    probes = {"rademacher": ad.RademacherProbe(), "gaussian": ad.GaussianProbe()}
    products = {"jvp": ad.ForwardMode(), "vjp": ad.ReverseMode()}
    estimator = ad.HutchinsonTrace(num_probes=2, probe=probes[probe], products=products[mode])

    @jax.jit
    @jax.vmap
    def estimate(key):
        return ad.ode_log_likelihood(process, score, x, key=key, trace=estimator).log_prob

    draws = estimate(jax.random.split(getkey(), 64))
    stderr = jnp.std(draws) / math.sqrt(draws.size)
    assert jnp.std(draws) > 0
    # Unbiased: the mean lies within 4 standard errors (a false alarm 1 in 15,000 runs),
    # plus the solver's own ~1e-4 error.
    assert abs(jnp.mean(draws) - exact) < 4 * stderr + 1e-3


def test_hutch_plus_plus_is_unbiased_and_exact_at_full_rank(getkey):
    process = _processes()["VP"]
    data = random_mixture(getkey(), (4,))
    score = mixture_score(process, data)
    x = data.sample(getkey())
    exact = ad.ode_log_likelihood(process, score, x, key=getkey(), trace="exact").log_prob

    @jax.jit
    @jax.vmap
    def estimate(key):
        estimator = ad.HutchPlusPlusTrace(num_sketch=1)
        return ad.ode_log_likelihood(process, score, x, key=key, trace=estimator).log_prob

    draws = estimate(jax.random.split(getkey(), 64))
    stderr = jnp.std(draws) / math.sqrt(draws.size)
    assert jnp.std(draws) > 0
    # As Hutchinson's test: within 4 standard errors plus the solver's error.
    assert abs(jnp.mean(draws) - exact) < 4 * stderr + 1e-3
    # A sketch as wide as the dimension spans everything: the trace is exact.
    full = ad.ode_log_likelihood(
        process, score, x, key=getkey(), trace=ad.HutchPlusPlusTrace(num_sketch=4)
    ).log_prob
    np.testing.assert_allclose(full, exact, atol=1e-3)


@pytest.mark.slow
def test_nfe_is_the_real_count(getkey):
    process = _processes()["VP"]
    data = random_mixture(getkey(), (2,))
    score = mixture_score(process, data)
    x = data.sample(getkey())
    calls = []

    def counted(u, t):
        jax.debug.callback(lambda: calls.append(1))
        return score(u, t)

    fixed = {"stepsize_controller": diffrax.ConstantStepSize(), "dt0": 0.05}
    # Runge-Kutta tableaus, adaptive (with and without first-same-as-last) and fixed, and
    # solvers without one.
    cases = [
        (diffrax.Tsit5(), {}),
        (diffrax.Heun(), {}),
        (diffrax.Euler(), fixed),
        (diffrax.ReversibleHeun(), fixed),
        (diffrax.LeapfrogMidpoint(), fixed),
        (diffrax.Tsit5(), {"stepsize_controller": diffrax.StepTo(ts=jnp.linspace(0, 1, 7))}),
    ]
    for solver, kwargs in cases:
        calls.clear()
        result = jax.jit(
            lambda x, solver=solver, kwargs=kwargs: ad.ode_log_likelihood(
                process, counted, x, key=getkey(), solver=solver, trace="exact", **kwargs
            )
        )(x)
        jax.effects_barrier()
        assert int(result.nfe) == len(calls), (type(solver).__name__, kwargs)
        assert bool(result.succeeded) and int(result.num_steps) > 0
        assert int(result.num_steps) == result.num_accepted_steps + result.num_rejected_steps
    # An implicit solver's evaluations depend on its Newton iterations: not counted.
    implicit = ad.ode_log_likelihood(process, score, x, key=getkey(), solver=diffrax.Kvaerno3())
    assert int(implicit.nfe) == -1 and bool(implicit.succeeded)


@pytest.mark.slow
def test_tuned_grid_keeps_the_adaptive_accuracy(getkey):
    """A fixed grid tuned to adaptive solves at 1e-5 (exact trace): every example within
    the issue's 1e-3 nats of the analytic density, each in the grid's steps."""
    process = _processes()["VP"]
    data = random_mixture(getkey(), (2, 2))
    score = mixture_score(process, data)
    p0 = marginal(process, data, 0.0)
    xs = jax.vmap(data.sample)(jax.random.split(getkey(), 16))
    adaptive = ad.ODELikelihood(trace=ad.ExactTrace())
    ends = jax.jit(jax.vmap(lambda x: adaptive.step_ends(process, score, x, key=getkey())))(xs)
    accepted = np.isfinite(ends).sum(axis=1)
    adaptive_result = jax.jit(jax.vmap(lambda x: adaptive(process, score, x, key=getkey())))(xs)
    np.testing.assert_array_equal(accepted, adaptive_result.num_accepted_steps)
    grid = np.asarray(ad.tuned_grid(ends, 0.0, 1.0))
    assert len(grid) - 1 == round(accepted.mean())
    assert grid[0] == 0.0 and grid[-1] == 1.0 and np.all(np.diff(grid) > 0)
    # Steps follow the controller's: the first step ends where the adaptive ones did on
    # average, not at a uniform grid's 1 / N.
    first = np.mean(ends[:, 0])
    assert abs(grid[1] - first) < 0.5 * abs(1.0 / (len(grid) - 1) - first)
    fixed = ad.ODELikelihood(
        ad.ODESolve(stepsize_controller=diffrax.StepTo(ts=jnp.asarray(grid))), ad.ExactTrace()
    )
    result = jax.jit(jax.vmap(lambda x: fixed(process, score, x, key=getkey())))(xs)
    np.testing.assert_allclose(result.log_prob, jax.vmap(p0.log_prob)(xs), atol=1e-3)
    np.testing.assert_array_equal(result.num_steps, len(grid) - 1)
    assert np.all(result.num_rejected_steps == 0)
    # A backward solve's step ends give a grid from t0 = 1 down to t1 = 0.
    backward = ad.tuned_grid(1.0 - ends, 1.0, 0.0)
    np.testing.assert_allclose(backward, 1.0 - grid, atol=1e-6)
    assert len(ad.tuned_grid(ends, 0.0, 1.0, num_steps=5)) == 6


def test_failed_solve_is_reported_not_raised(getkey):
    process = _processes()["VP"]
    data = random_mixture(getkey(), (2,))
    x = data.sample(getkey())
    result = jax.jit(
        lambda x: ad.ode_log_likelihood(
            process, mixture_score(process, data), x, key=getkey(), max_steps=3
        )
    )(x)
    assert not bool(result.succeeded)
    assert result.result == diffrax.RESULTS.max_steps_reached
    assert jnp.isnan(result.log_prob)


def test_full_precision_whatever_the_default(getkey):
    process = _processes()["VP"]
    data = random_mixture(getkey(), (2,))
    score = mixture_score(process, data)
    x = data.sample(getkey())

    def f(x):
        return ad.ode_log_likelihood(process, score, x, key=getkey(), trace="exact").log_prob

    with jax.default_matmul_precision("bfloat16"):
        text = jax.jit(f).lower(x).as_text()
    assert "DEFAULT" not in text
    assert "HIGHEST" in text


@pytest.mark.slow
def test_bits_per_dim_offset_and_bound(getkey):
    # A single wide Gaussian as the density: the exact probability of a bin is a 2-D
    # integral we can take by quadrature, which checks the dequantisation and its offset.
    process = _processes()["VP"]
    data = random_mixture(getkey(), (2,), num_components=1, scale=0.5)
    score = mixture_score(process, data)
    p0 = marginal(process, data, 0.0)
    num_levels = 16
    x = ad.from_levels(jnp.array([7, 9]), num_levels)
    exact_trace = ad.ODELikelihood(trace=ad.ExactTrace())
    key = getkey()

    def bound(importance_weighted):
        return ad.ode_bits_per_dim(
            process,
            score,
            x,
            key=key,
            num_levels=num_levels,
            num_samples=64,
            importance_weighted=importance_weighted,
            likelihood=exact_trace,
        )

    bpd = bound(False)
    # Exact discrete probability of the bin under the (near-Gaussian) p_0, by quadrature.
    grid = (jnp.arange(64) + 0.5) / 64
    ys = jnp.stack(jnp.meshgrid(grid, grid), -1).reshape(-1, 2)
    ys = -1.0 + 2.0 * (jnp.array([[7, 9]]) + ys) / num_levels
    prob = jnp.mean(jnp.exp(jax.vmap(p0.log_prob)(ys))) * (2 / num_levels) ** 2
    exact_bpd = -jnp.log2(prob) / 2
    # A bound (Jensen), and tight here because p is nearly constant over a bin: the gap is
    # the within-bin variance of log p (~1e-2 bits) plus Monte Carlo error over 64 draws.
    assert bpd >= exact_bpd - 0.02
    assert bpd - exact_bpd < 0.05
    # On the same 64 draws, log-mean-exp of the log-weights is never below their mean.
    assert bound(True) <= bpd


def test_unknown_trace_is_an_error(getkey):
    process = _processes()["VP"]
    with pytest.raises(ValueError, match="Unknown trace"):
        ad.ode_log_likelihood(process, lambda u, t: -u, jnp.zeros(2), key=getkey(), trace="x")


def test_process_dequantization_bounds_discrete_data(getkey):
    # Discrete data on an 8 x 8 grid with the exact score of their t > 0 marginals: the
    # ODE bound through q(z_0 | x) must lie above the entropy H(P) and close to it.
    from .test_losses import NUM_LEVELS, _discrete_data

    points, log_probs = _discrete_data()
    process = ad.VP(ad.LinearSchedule(gamma_min=-13.3, gamma_max=20.0))
    atoms = GaussianMixture(log_probs, points, jnp.zeros((points.shape[0], 2, 2)), (2,))
    score = mixture_score(process, atoms)

    @jax.jit
    @jax.vmap
    def bound(x, key):
        return ad.ode_bits_per_dim(
            process,
            score,
            x,
            key=key,
            num_levels=NUM_LEVELS,
            dequantization=ad.ProcessDequantization(),
            num_samples=4,
            likelihood=ad.ODELikelihood(trace=ad.ExactTrace()),
        )

    bpd = bound(points, jax.random.split(getkey(), points.shape[0]))
    weights = jnp.exp(log_probs)
    entropy_bpd = -jnp.sum(weights * log_probs) / (2 * math.log(2))
    expected = weights @ bpd
    # The decoder is near-certain at sigma_0 = 1.3e-3 and the ODE exact to ~1e-4 nats, so
    # the per-point bound is -log2 P(x)/D up to the solver error: compare the expectation
    # with H(P) to 0.01 bits, and every point with its own -log2 P(x)/D.
    assert expected >= entropy_bpd - 0.01
    assert expected - entropy_bpd < 0.01
    np.testing.assert_allclose(bpd, -log_probs / (2 * math.log(2)), atol=0.02)


def test_importance_weighting_refuses_a_random_trace():
    # exp of a Hutchinson log-density is biased upward, so a logsumexp over draws of it is
    # no bound: the weighted estimate must ask for the exact trace (or no weighting).
    process = ad.VP(ad.LinearSchedule(-13.3, 5.0))
    x = ad.from_levels(jnp.array([3, 9]), 16)

    def bound(**kwargs):
        return ad.ode_bits_per_dim(
            process, lambda u, t: -u, x, key=jax.random.key(0), num_levels=16, **kwargs
        )

    with pytest.raises(ValueError, match="ExactTrace"):
        bound(num_samples=2, importance_weighted=True)
    exact = ad.ODELikelihood(trace=ad.ExactTrace())
    assert np.isfinite(bound(num_samples=2, importance_weighted=True, likelihood=exact))
    assert np.isfinite(bound(num_samples=2, importance_weighted=False))


@pytest.mark.slow
def test_chosen_tolerance_keeps_the_solver_bias_within_budget(getkey):
    """The chooser and the solver-error estimate against the analytic density: the mean
    of -log p over 64 mixture points (exact trace: the solver's error alone), as if
    these were the checked part of a 20,000-example test set."""
    process = _processes()["VP"]
    data = random_mixture(getkey(), (4,))
    score = mixture_score(process, data)
    p0 = marginal(process, data, 0.0)
    xs = jax.vmap(data.sample)(jax.random.split(getkey(), 64))
    exact = -np.asarray(jax.vmap(p0.log_prob)(xs))

    @jax.jit
    def nll(tol):
        def one(x):
            return ad.ode_log_likelihood(
                process, score, x, key=jax.random.key(0), trace="exact", rtol=tol, atol=tol
            ).log_prob

        return -jax.vmap(one)(xs)

    def figures(tol):
        return np.asarray(nll(jnp.float32(tol)))

    num_examples = 20_000
    error = ad.choose_tolerance(figures, num_examples)
    _, _, half_width = ad.mean_interval(exact)
    budget = 0.1 * half_width * math.sqrt(len(exact) / num_examples)
    assert error.within_budget and error.num_examples == 64
    np.testing.assert_allclose(error.budget, budget, rtol=0.05)  # the spread at tol vs exact
    # The chooser is not vacuous: the loosest tolerance is outside the budget, and it
    # stopped at the first that is within it.
    assert error.tolerance < ad.AUTO_TOLERANCES[0]
    looser = ad.AUTO_TOLERANCES[ad.AUTO_TOLERANCES.index(error.tolerance) - 1]
    reference = figures(1e-7)
    rejected = ad.solver_error(
        figures(looser),
        reference,
        tolerance=looser,
        reference_tolerance=1e-7,
        half_width=error.budget / 0.1,
    )
    assert not rejected.within_budget
    # The estimate is the true bias (against the analytic density) to within three of
    # its standard errors plus the reference's own error (~1e-5 nats at 1e-7).
    true_bias = np.mean(figures(error.tolerance) - exact)
    assert abs(error.bias - true_bias) < 3 * error.stderr + 1e-4
    assert abs(true_bias) <= error.budget + 1e-4
    with pytest.raises(ValueError, match="tighter than every"):
        ad.choose_tolerance(figures, num_examples, reference_tolerance=1e-3)
