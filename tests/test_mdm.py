"""Linear multivariate diffusions: the transition kernel, the matrices, the bound, VP as
K = 0."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg

import adaptive_diffusion as ad
from adaptive_diffusion._processes import _small_linalg as small_linalg

from .helpers import GaussianMixture, marginal, mixture_score, random_mixture


MDMS = {
    "CLD": ad.CLD(),
    "ALDA": ad.ALDA(),
    "MALDA": ad.MALDA(num_aux=3),
    "learned-diag": ad.LearnedMDM(2, key=jax.random.key(0)),
    "learned-full": ad.LearnedMDM(2, key=jax.random.key(1), full_d=True),
}
TIMES = (1e-3, 0.01, 0.1, 0.5, 1.0)


def _moments(process, t):
    """A_t and Sigma_t by integrating dA/dB = -M A and dS/dB = -M S - S M^T + 2D in float64
    (scipy's adaptive RK45 at rtol 1e-12) over the integrated beta B(t)."""
    q, d = (np.asarray(m, np.float64) for m in process.matrices())
    m, n = q + d, q.shape[0]

    def rhs(_, y):
        a, s = y[: n * n].reshape(n, n), y[n * n :].reshape(n, n)
        return np.concatenate([(-m @ a).ravel(), (-m @ s - s @ m.T + 2 * d).ravel()])

    y0 = np.concatenate([np.eye(n).ravel(), np.zeros(n * n)])
    b = float(process.integrated_beta(t))
    sol = scipy.integrate.solve_ivp(rhs, (0.0, b), y0, rtol=1e-12, atol=1e-15)
    return sol.y[: n * n, -1].reshape(n, n), sol.y[n * n :, -1].reshape(n, n)


@pytest.mark.parametrize("name", MDMS)
def test_transition_against_the_moment_odes_and_van_loan(name):
    process = MDMS[name]
    a0, s0 = process.transition(0.0)
    n = process.num_aux + 1
    np.testing.assert_array_equal(a0, np.eye(n))
    np.testing.assert_array_equal(s0, np.zeros((n, n)))
    transitions = jax.jit(jax.vmap(process.transition))(jnp.asarray(TIMES))
    q, d = (np.asarray(m, np.float64) for m in process.matrices())
    for t, a, sigma in zip(TIMES, *transitions):
        a_ref, s_ref = _moments(process, t)
        # float32 throughout: 1e-6 of the largest entry, and 2e-5 relative (the data block
        # of CLD is O(t^3), 1.5e-12 at t = 1e-3, and is still resolved).
        np.testing.assert_allclose(a, a_ref, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(sigma, s_ref, rtol=2e-5, atol=1e-6 * np.abs(s_ref).max())
        assert np.diag(sigma)[0] > 0 and np.allclose(sigma, sigma.T)
        assert np.min(np.linalg.eigvalsh(np.asarray(sigma, np.float64))) > -1e-7
        # Van Loan's matrix fraction (the reference's construction), in float64.
        b = float(process.integrated_beta(t))
        block = scipy.linalg.expm(np.block([[-(q + d), 2 * d], [np.zeros((n, n)), (q + d).T]]) * b)
        np.testing.assert_allclose(block[:n, n:] @ a_ref.T, s_ref, atol=1e-9)
    # The stationary law: Sigma_t = I - A_t A_t^T, and N(0, I) is nearly reached at t = 1.
    a1, s1 = _moments(process, 1.0)
    np.testing.assert_allclose(s1, np.eye(n) - a1 @ a1.T, atol=1e-9)


def test_defaults_reach_the_prior():
    # For unit-scale data the gap between q(u_1 | u_0) and N(0, I) is |A_1 u_0|^2 / 2 plus
    # the covariance's KL: bounded here by its value at |x| = 1, per data coordinate.
    for name, process in MDMS.items():
        a, sigma = (np.asarray(m, np.float64) for m in process.transition(1.0))
        u0 = np.zeros(a.shape[0])
        u0[0] = 1.0
        mean = a @ u0
        k = a.shape[0]
        kl = 0.5 * (np.trace(sigma) + mean @ mean - k - np.linalg.slogdet(sigma)[1])
        assert kl < 3e-3, (name, kl)  # measured: 4e-5 (MALDA) to 2.3e-3 (learned, full D)


def test_learned_matrices_stay_antisymmetric_and_psd(getkey):
    for full_d in (False, True):
        process = ad.LearnedMDM(3, key=getkey(), full_d=full_d)
        for scale in (1.0, 10.0, 100.0):
            params, static = eqx.partition(process, eqx.is_inexact_array)
            noisy = jax.tree.map(lambda p: scale * jax.random.normal(getkey(), p.shape), params)
            q, d = eqx.combine(noisy, static).matrices()
            np.testing.assert_allclose(q, -q.T, atol=0)
            np.testing.assert_allclose(d, d.T, rtol=1e-6)
            assert jnp.min(jnp.linalg.eigvalsh(d)) >= 0.999e-3 - 1e-6 * scale**2
    with pytest.raises(ValueError, match="antisymmetric"):
        ad.LinearMDM([[0.0, 1.0], [1.0, 0.0]], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="positive semi-definite"):
        ad.LinearMDM(np.zeros((2, 2)), np.diag([1.0, -1.0]))


def test_gamma_min_sets_where_the_bound_starts():
    # The float64 solver inverts the process's own float32 gamma (Taylor series and
    # doublings): to 1e-5 relative in t, and gamma(t_min) to 1e-3 (float32's log of a
    # data block as small as 1e-12).
    def gamma(process, t):  # the state is not read: one kernel for every u
        return float(process.gamma(jnp.zeros((process.num_aux + 1, 1)), t))

    for factory in (ad.CLD, ad.ALDA, ad.MALDA):
        for gamma_min in (-27.0, -8.0):
            process = factory(gamma_min=gamma_min)
            assert gamma(process, process.t_min) == pytest.approx(gamma_min, abs=1e-3)
            q, d = process.matrices()
            t = process.t_min * 1.01
            again = ad.time_min_for_gamma(
                q, d, process.beta_min, process.beta_max, gamma(process, t)
            )
            assert again == pytest.approx(t, rel=1e-5)
    # The reference's t_min = 1e-3 is the default; CLD's data is then at gamma = -27.2.
    assert ad.CLD().t_min == 1e-3
    assert gamma(ad.CLD(), 1e-3) == pytest.approx(-27.2, abs=0.05)
    learned = ad.LearnedMDM(1, key=jax.random.key(0), gamma_min=-8.0)
    # Solved for the initial matrices without their random part (0.1-scale): near -8.
    assert gamma(learned, learned.t_min) == pytest.approx(-8.0, abs=0.5)
    with pytest.raises(ValueError, match="not both"):
        ad.CLD(time_min=1e-2, gamma_min=-8.0)
    with pytest.raises(ValueError, match="outside the data's negative log-SNR range"):
        ad.CLD(gamma_min=12.0)


class _BetaLinear(ad.AbstractSchedule):
    """VP's gamma(t) = log(e^{B(tau)} - 1) on tau = t_min + (1 - t_min) t: the K = 0 MDM."""

    t_min: float

    def __call__(self, t):
        tau = self.t_min + (1.0 - self.t_min) * jnp.asarray(t)
        return jnp.log(jnp.expm1(0.1 * tau + 4.95 * tau**2))


def test_vp_is_the_case_without_auxiliary_variables():
    # du = -beta D u dt + sqrt(2 beta D) dW with D = 1/2 is the VP SDE of beta(t); the
    # MDM's bound over [t_min, 1] is VP's over [0, 1] with the schedule shifted to match.
    mdm = ad.LinearMDM([[0.0]], [[0.5]])
    vp = ad.VP(_BetaLinear(mdm.t_min))
    shape = (1, 4, 4)
    weights = jax.random.normal(jax.random.key(0), (16, 16)) / 4

    def net(u, t):  # ignores t, whose scale differs between the two processes
        return jnp.tanh(weights @ u.reshape(-1)).reshape(u.shape)

    xs = ad.from_levels(jax.random.randint(jax.random.key(1), (8, *shape), 0, 17), 17)

    @jax.jit
    def both(key):
        ours = [
            ad.batch_nelbo(mdm, mdm.denoiser(net), xs, key=key, num_levels=17, num_steps=n)
            for n in (None, 10)
        ]
        theirs = [
            ad.batch_nelbo(vp, net, xs, key=key, num_levels=17, num_steps=n) for n in (None, 10)
        ]
        return ours, theirs

    for ours, theirs in zip(*both(jax.random.key(2))):
        for field in ("diffusion", "prior", "reconstruction"):
            # The same draws; float32 differences in how the two compute their scales.
            np.testing.assert_allclose(
                getattr(ours, field), getattr(theirs, field), rtol=2e-4, atol=1e-6
            )
        np.testing.assert_array_equal(ours.auxiliary, 0.0)


@pytest.mark.slow
def test_joint_ode_likelihood_of_a_learned_mdm():
    # Gaussian-mixture data over the joint (x, v) have the analytic marginal of their
    # components through transition(t); with the exact score the ODE's log p_0 is within
    # the solver's ~1e-4 nats of it (CLD is checked so in test_families.py). beta_max = 40
    # puts p_1 within ~1e-6 nats of the prior N(0, I) (at 10 the learned one misses by ~1e-2).
    process = ad.LearnedMDM(2, key=jax.random.key(5), beta_max=40.0)
    data = random_mixture(jax.random.key(1), (3, 1, 2, 2), scale=0.3)
    score = mixture_score(process, data)
    states = jax.vmap(data.sample)(jax.random.split(jax.random.key(3), 2))

    @jax.jit
    def likelihood(u, key):
        result = ad.ode_log_likelihood(process, score, u, key=key, trace="exact")
        return result.log_prob, marginal(process, data, 0.0).log_prob(u)

    ours, exact = jax.vmap(likelihood)(states, jax.random.split(jax.random.key(4), 2))
    np.testing.assert_allclose(ours, exact, atol=1e-3)


NUM_LEVELS = 4


def _with_aux_init(process, coef, variance):
    """`process` with q(v_0 | x) = N(coef x, variance) for every auxiliary variable."""
    k = process.num_aux
    params = jnp.stack([jnp.full(k, coef), jnp.full(k, math.log(variance))])
    return eqx.tree_at(lambda p: p.aux_params, process, params)


@pytest.mark.slow
def test_bound_holds_for_the_optimal_score(getkey):
    # P over the 4 x 4 bins of [-1, 1]^2; u_0 = (x, v_0) with v_0 ~ q(v_0 | x) = N(c x, s^2):
    # a mixture over the joint state whose marginals (and exact score) the helpers compute.
    k = jnp.arange(NUM_LEVELS)
    points = ad.from_levels(jnp.stack(jnp.meshgrid(k, k, indexing="ij"), -1).reshape(-1, 2), 4)
    cov = jnp.array([[0.4, 0.2], [0.2, 0.5]])
    log_probs = jax.nn.log_softmax(-0.5 * jnp.sum(points @ jnp.linalg.inv(cov) * points, 1))
    num = 512
    weights = jnp.exp(log_probs)
    entropy = -weights @ log_probs / (2 * math.log(2))
    processes = (
        ad.LearnedMDM(2, key=getkey()),
        # CLD with a learned, x-conditioned q(v_0 | x) away from its initialisation (at
        # its initialisation it is the reference's fixed law: test_decoder_is_the_exact_posterior).
        _with_aux_init(ad.CLD(learn_aux_init=True), 0.5, 0.04),
    )
    for process in processes:
        n = process.num_aux + 1
        coef, var = process.aux_init()
        means = jnp.concatenate([points, *(c * points for c in coef)], 1)
        block = jnp.diag(jnp.concatenate([jnp.zeros(2), jnp.repeat(var, 2)]))
        atoms = GaussianMixture(
            log_probs, means, jnp.broadcast_to(block, (16, 2 * n, 2 * n)), (n, 2)
        )
        score = mixture_score(process, atoms)

        def model(u, t, score=score, process=process):
            return process.eps_from_score(u, t, score(u, t))

        @jax.jit
        def totals(key, process=process, model=model):
            def per_point(x, key):
                xs = jnp.broadcast_to(x, (num, 2))
                return ad.batch_nelbo(process, model, xs, key=key, num_levels=NUM_LEVELS).total

            return jax.vmap(per_point)(points, jax.random.split(key, 16))

        draws = totals(getkey())
        bound = weights @ jnp.mean(draws, 1)
        stderr = jnp.sqrt(weights**2 @ (jnp.var(draws, 1) / num))
        # A bound on -log2 P / D within 4 standard errors, and close to it: the decoder of
        # v_0 ignores the score at t_min, and the prior and the x decoder cost ~1e-3 bits.
        assert bound >= entropy - 4 * stderr, type(process).__name__
        assert bound - entropy < 0.1 + 4 * stderr, (type(process).__name__, bound, entropy)


@pytest.mark.parametrize("coef, s2", [(0.0, 0.01), (-0.6, 0.05)])
def test_decoder_is_the_exact_posterior(coef, s2):
    # CLD, one data coordinate, q(v_0 | x) = N(c x, s^2) (the reference's c = 0, s^2 =
    # 0.01, and learned values): given z = u_{t_min}, the model's decoder must be the exact
    # posterior of z = A (x, v_0) + L eps with a flat prior on x, computed here in float64
    # another way: p(x | z) is N(z; (a_0 + c a_1) x, N) with N = Sigma + s^2 a_1 a_1^T (v_0
    # integrated out first), i.e. precision e^T N^-1 e for e = a_0 + c a_1, under VDM's
    # discretised decoder; p(v_0 | x, z) by conditioning the joint Gaussian.
    # Float32 kernel and conditioning: 1e-4 relative at gamma_min = -9.5; at -27 (the
    # reference's t_min = 1e-3) the data block of Sigma is 1e-12 and float32's conditioning
    # on it costs 1e-3 relative (measured 7.7e-4).
    from adaptive_diffusion._discrete import discretized_gaussian_nll

    for gamma_min, rtol in ((-27.0, 1.5e-3), (-9.5, 1e-4), (-2.5, 1e-4)):
        process = _with_aux_init(ad.CLD(gamma_min=gamma_min, learn_aux_init=True), coef, s2)
        a, sigma = (np.asarray(m, np.float64) for m in process.transition(process.t_min))
        x, v0 = 0.375, coef * 0.375 + 0.07
        z = a @ np.array([x, v0]) + np.linalg.cholesky(sigma) @ np.array([0.3, -1.2])
        precision = np.linalg.inv(sigma)
        tau2 = 1.0 / (1.0 / s2 + a[:, 1] @ precision @ a[:, 1])
        mu = tau2 * (a[:, 1] @ precision @ (z - a[:, 0] * x) + coef * x / s2)
        v_nll = 0.5 * (v0 - mu) ** 2 / tau2 + 0.5 * math.log(2 * math.pi * tau2)
        effect = a[:, 0] + coef * a[:, 1]
        noise = np.linalg.inv(sigma + s2 * np.outer(a[:, 1], a[:, 1]))
        x_precision = effect @ noise @ effect
        x_mean = effect @ noise @ z / x_precision
        x_nll = discretized_gaussian_nll(
            jnp.float32(x), jnp.float32(x_mean), jnp.float32(x_precision**-0.5), 17
        )
        u = jnp.asarray(z, jnp.float32).reshape(2, 1)
        u0 = jnp.array([[x], [v0]], jnp.float32)
        got = process.decoder_nll(u, u0, 17)
        np.testing.assert_allclose(got, float(x_nll) + v_nll, rtol=rtol, err_msg=str(gamma_min))
        # Its mode is the bin of that mean.
        assert int(process.decode(u, 17)[0]) == int(ad.to_levels(jnp.float32(x_mean), 17))
    # The reference's fixed law is the learned one at its initialisation.
    fixed, learned = ad.CLD(gamma_min=-5.5), ad.CLD(gamma_min=-5.5, learn_aux_init=True)
    np.testing.assert_allclose(fixed.decoder_nll(u, u0, 17), learned.decoder_nll(u, u0, 17))


def test_learned_aux_init_draws_costs_and_trains(getkey):
    # q(v_0 | x) = N(c x, s^2): the draw, its log-density (the importance weight) and its
    # expectation (the bound's auxiliary term, the negated entropy) in closed form, and
    # gradients reach (c, log s^2).
    process = _with_aux_init(ad.LearnedMDM(2, key=getkey(), learn_aux_init=True), 0.3, 0.02)
    x = ad.from_levels(jax.random.randint(getkey(), (1, 4, 4), 0, 17), 17)
    key = getkey()
    draw = process.initial_state(key, x)
    white = jax.random.normal(key, (2, 1, 4, 4))
    np.testing.assert_allclose(draw.state[0], x)
    # float32: s = exp(log s^2 / 2) is rounded twice (a few ulps of values below 1).
    np.testing.assert_allclose(draw.state[1:], 0.3 * x[None] + math.sqrt(0.02) * white, atol=1e-6)
    log_q = -0.5 * jnp.sum(white**2) - 32 * 0.5 * math.log(2 * math.pi * 0.02)
    np.testing.assert_allclose(draw.log_ratio, log_q, rtol=1e-6)
    np.testing.assert_allclose(draw.kl, -32 * 0.5 * (1 + math.log(2 * math.pi * 0.02)), rtol=1e-6)

    # The parameters enter the bound through the draw, its cost and the decoder (the
    # diffusion and prior terms see them only through u_0): their gradients at a fixed z.
    def loss(process):
        draw = process.initial_state(key, x)
        z = draw.state + 0.1 * jnp.ones_like(draw.state)
        return process.decoder_nll(z, draw.state, 17) + draw.kl

    grads = eqx.filter_jit(jax.grad(loss))(process)
    assert np.all(np.isfinite(grads.aux_params)) and np.all(grads.aux_params != 0)
    # Fixed (the default), it is no parameter at all.
    assert ad.CLD().aux_params is None and ad.LearnedMDM(1, key=getkey()).aux_params is None


@pytest.mark.parametrize("times", [ad.UniformTimes(), ad.LikelihoodWeightedTimes()])
def test_learned_time_min_derivative_is_the_integrand_at_the_start(times):
    # The diffusion term estimates I(t_min) = int_{t_min}^1 L(t) dt with times
    # t_min + (1 - t_min) v: over a midpoint grid of v (the same noise at every t, so L is
    # one smooth function of t), its derivative through the learned logit must be
    # dI/dlogit = -L(t_min) t_min (1 - t_min), under uniform and importance-sampled times.
    # The grid's own error in that derivative is O(1/n^2) for smooth L; float32 sums of
    # 1000 terms are good to ~1e-6, measured 2e-6: rtol 1e-4.
    process = ad.CLD(gamma_min=-4.5, learn_time_min=True)
    np.testing.assert_allclose(process.t_min, process.time_min, rtol=1e-6)
    x = ad.from_levels(jnp.arange(16).reshape(1, 4, 4) % 17, 17)

    def model(u, t):
        return 0.3 * jnp.sin(u) * t

    def term(process, uniform, times):
        bound = ad.nelbo(
            process, model, x, key=jax.random.key(0), num_levels=17, times=times, uniform=uniform
        )
        return bound.diffusion

    def integral(logit):
        learned = eqx.tree_at(lambda p: p.time_logit, process, logit)
        grid = (jnp.arange(1000) + 0.5) / 1000
        return jnp.mean(jax.vmap(lambda v: term(learned, v, times))(grid))

    derivative = jax.jit(jax.grad(integral))(process.time_logit)
    t_min = process.t_min
    at_start = term(process, 0.0, ad.UniformTimes()) / (1.0 - t_min)
    np.testing.assert_allclose(derivative, -at_start * t_min * (1.0 - t_min), rtol=1e-4)
    # Fixed (the default), it is no parameter; the configs learn it by process.endpoints.
    assert (
        ad.CLD().time_logit is None and ad.LearnedMDM(1, key=jax.random.key(0)).time_logit is None
    )


@pytest.mark.parametrize("n", [2, 5])
def test_small_linalg_against_lapack(n):
    # The unrolled, LAPACK-free factorisations of the MDM's (K+1) x (K+1) matrices agree
    # with LAPACK to float32 rounding (a few ulps times the condition number, here < 100).
    rng = np.random.default_rng(n)
    b = jnp.asarray(rng.normal(size=(n, n)), jnp.float32)
    spd = b @ b.T + 0.5 * jnp.eye(n)
    general = b + 0.1 * jnp.eye(n)
    swap = jnp.roll(jnp.eye(n), 1, axis=0)  # pivoting: a zero leading entry

    @jax.jit
    def ours(spd, general, swap):
        chol = small_linalg.cholesky(spd)
        grad = jax.grad(lambda a: jnp.sum(jnp.sin(small_linalg.inverse(a))))(general)
        return (
            chol,
            small_linalg.triangular_inverse(chol),
            small_linalg.spd_inverse(spd),
            small_linalg.inverse(general),
            small_linalg.inverse(swap),
            grad,
        )

    chol, inv_chol, inv_spd, inv, inv_swap, grad = ours(spd, general, swap)
    np.testing.assert_allclose(chol, np.linalg.cholesky(spd), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(inv_chol, np.linalg.inv(np.asarray(chol)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(inv_spd, np.linalg.inv(spd), atol=1e-3)
    np.testing.assert_allclose(inv, np.linalg.inv(general), atol=2e-4)
    np.testing.assert_allclose(inv_swap, swap.T, atol=1e-7)
    # Gradients as LAPACK's.
    expected = jax.grad(lambda a: jnp.sum(jnp.sin(jnp.linalg.inv(a))))(general)
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-3)


def test_small_cholesky_of_a_singular_psd_matrix():
    # CLD's 2D = diag(0, 2): a zero pivot gives a zero column, and L L^T = m still.
    m = jnp.array([[0.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.0, 3.0]])
    chol = small_linalg.cholesky(m)
    np.testing.assert_allclose(chol @ chol.T, m, atol=1e-6)
    assert np.all(np.isfinite(chol)) and np.all(chol[:, 0] == 0.0)


@pytest.mark.parametrize("name", ["CLD", "learned-diag", "CLD-aux"])
@pytest.mark.parametrize("t", [0.05, 0.4])
def test_gaussian_eps_is_the_regression_of_the_noise_on_the_state(name, t):
    """`gaussian_eps` against an independent estimate of E[eps | u_t] for data N(0, 0.3):
    the least-squares regression of eps on u_t over 400,000 draws of (x, v_0, eps) through
    `perturb` (the conditional mean of jointly Gaussian variables is that linear map).
    The regression's relative error is O(N^-1/2 cond) ~ 1e-2 at these times, hence the
    tolerance; a wrong Cov(u_0) (the data variance or q(v_0 | x) left out) misses by far
    more."""
    var = 0.3
    if name == "CLD-aux":
        process = ad.CLD(learn_aux_init=True, mixed_score=var)
        process = eqx.tree_at(lambda p: p.aux_params, process, jnp.array([[0.5], [-3.0]]))
    elif name == "CLD":
        process = ad.CLD(mixed_score=var)
    else:
        process = ad.LearnedMDM(2, key=jax.random.key(0), mixed_score=var)
    k = process.num_aux + 1
    key_x, key_v, key_e = jax.random.split(jax.random.key(0), 3)
    n = 400_000
    x = math.sqrt(var) * jax.random.normal(key_x, (n,))
    u0 = process.initial_state(key_v, x).state
    eps = jax.random.normal(key_e, (k, n))
    u = process.perturb(u0, t, eps)
    u64, eps64 = np.asarray(u, np.float64), np.asarray(eps, np.float64)
    regression = (eps64 @ u64.T) @ np.linalg.inv(u64 @ u64.T)
    exact = np.asarray(process.gaussian_eps(jnp.eye(k), t), np.float64)
    np.testing.assert_allclose(exact, regression, atol=2e-2 * np.abs(regression).max())
    # The model of a network that outputs zero is that denoiser.
    model = process.denoiser(lambda h, t: jnp.zeros_like(h))
    np.testing.assert_allclose(model(u[:, :5], t), process.gaussian_eps(u[:, :5], t), atol=1e-6)


def test_mixed_score_from_the_config_and_refused_where_it_is_wrong():
    from adaptive_diffusion.train import ProcessConfig
    from adaptive_diffusion.train._registry import build_process

    process = build_process(
        ProcessConfig(kind="mdm", mixed_score=0.4), (1, 4, 4), jax.random.key(0), jax.random.key(1)
    )
    assert process.mixed_score == 0.4
    with pytest.raises(ValueError, match="mixed_score"):
        ad.CLD(mixed_score=-1.0)
    with pytest.raises(ValueError, match="mixed_score"):
        ProcessConfig(kind="vp", mixed_score=0.4)
    with pytest.raises(ValueError, match="mixed_score"):
        ad.CLD().gaussian_eps(jnp.zeros((2, 3)), 0.5)
