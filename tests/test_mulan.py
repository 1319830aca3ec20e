"""MuLAN: schedules, latents, the bound, the likelihood, and sampling.

Small models are built eagerly (their initialisers compile once per shape and are shared
by the tests); each test runs its computation inside one `jit`.
"""

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptive_diffusion as ad


NUM_LEVELS = 4
PID_1E3 = diffrax.PIDController(rtol=1e-3, atol=1e-3)


def _discrete_data():
    """P over the 4 x 4 bins of [-1, 1]^2: a discretised correlated Gaussian (16 atoms)."""
    k = jnp.arange(NUM_LEVELS)
    grid = jnp.stack(jnp.meshgrid(k, k, indexing="ij"), -1).reshape(-1, 2)
    points = ad.from_levels(grid, NUM_LEVELS)
    cov = jnp.array([[0.4, 0.2], [0.2, 0.5]])
    logits = -0.5 * jnp.sum(points @ jnp.linalg.inv(cov) * points, axis=-1)
    return points, jax.nn.log_softmax(logits)


def _entropy_bpd(log_probs):
    return -jnp.sum(jnp.exp(log_probs) * log_probs) / (2 * math.log(2))


def _optimal_net(mulan, points, log_probs):
    """The exact eps-prediction E[eps | u_t, z] for the discrete data, as `net(h, t, z)`:
    under `condition(z)`, u_t ~ sum_k P_k N(alpha * x_k, diag(sigma^2))."""

    def net(h, t, z):
        u = h[:2]
        alpha, sigma = mulan.condition(z).scales(u, t)
        scaled = (u[None] - alpha[None] * points) / sigma[None]
        logits = log_probs - 0.5 * jnp.sum(scaled**2, axis=-1)
        x0 = jax.nn.softmax(logits) @ points
        return (u - alpha * x0) / sigma

    return net


def _small_mulan(key, shape, latent, **kwargs):
    """MuLAN with a tiny encoder (the encoders' own sizes do not matter to these tests)."""
    encoder = ad.nn.MLPEncoder(shape, latent.num_params, key=key, width=8, depth=1)
    return ad.MuLAN(shape, key=key, latent=latent, encoder=encoder, **kwargs)


def test_polynomial_schedule_is_monotone_with_exact_endpoints(getkey):
    shape = (1, 4, 4)
    ka, kb, kc, kr = jax.random.split(getkey(), 4)
    # Arbitrary coefficients, large ones included, and per-pixel double roots inside [0, 1]
    # (a (t - r)^2: the derivative touches zero there).
    a = 10 * jax.random.normal(ka, shape)
    b = 10 * jax.random.normal(kb, shape)
    c = 1e-3 + jax.nn.softplus(5 * jax.random.normal(kc, shape))
    r = jax.random.uniform(kr, shape)
    a = a.at[0, 0].set(jnp.abs(a[0, 0]) + 1.0)
    b = b.at[0, 0].set(-2 * a[0, 0] * r[0, 0])
    c = c.at[0, 0].set(a[0, 0] * r[0, 0] ** 2 + 1e-3)
    schedule = ad.PolynomialSchedule(a, b, c, gamma_min=-13.3, gamma_max=5.0)
    ts = jnp.linspace(0.0, 1.0, 2001)
    gammas, dgammas = jax.jit(jax.vmap(lambda t: ad.gamma_and_derivative(schedule, t)))(ts)
    assert gammas.shape == (2001, *shape)
    # Both endpoints exactly, in every pixel.
    assert jnp.all(gammas[0] == jnp.float32(-13.3))
    assert jnp.all(gammas[-1] == jnp.float32(5.0))
    # Monotone: the derivative is a square, never negative, and the values never decrease
    # by more than float32 rounding (4 ulp of 13.3, where the derivative is near zero).
    assert jnp.all(dgammas >= 0.0)
    assert jnp.all(jnp.diff(gammas, axis=0) >= -4 * 13.3 * jnp.finfo(jnp.float32).eps)
    # It is the degree-5 polynomial with derivative (a t^2 + b t + c)^2, rescaled.
    a, b, c = (np.asarray(v, np.float64) for v in (a, b, c))
    t = np.asarray(ts, np.float64).reshape(-1, 1, 1, 1)

    def poly(t):
        return (
            a**2 * t**5 / 5 + a * b * t**4 / 2 + (b**2 + 2 * a * c) * t**3 / 3 + b * c * t**2
        ) + c**2 * t

    expected = -13.3 + 18.3 * poly(t) / poly(1.0)
    np.testing.assert_allclose(gammas, expected, atol=2e-4 * 18.3)
    expected_d = 18.3 * (a * t**2 + b * t + c) ** 2 / poly(1.0)
    np.testing.assert_allclose(dgammas, expected_d, rtol=1e-4, atol=1e-4 * expected_d.max())


def test_schedule_networks_give_monotone_schedules_per_latent(getkey):
    shape = (1, 4, 4)
    ts = jnp.linspace(0.0, 1.0, 101)

    @jax.jit
    def curves(key):
        k_poly, k_mono, k_z = jax.random.split(key, 3)
        z1, z2 = jax.random.normal(k_z, (2, 3))
        kwargs = dict(gamma_min=-10.0, gamma_max=8.0)
        families = (
            ad.PolynomialScheduleNetwork(3, shape, key=k_poly, **kwargs),
            ad.MonotoneScheduleNetwork(3, shape, key=k_mono, **kwargs),
        )
        return [(jax.vmap(f(z1))(ts), jax.vmap(f(z2))(ts)) for f in families]

    # The polynomial hits its endpoints exactly, the rescaled monotone network to rounding.
    for (g1, g2), atol in zip(curves(getkey()), (0.0, 1e-5)):
        assert g1.shape == (101, *shape)
        np.testing.assert_allclose(g1[0], -10.0, rtol=0, atol=atol)
        np.testing.assert_allclose(g1[-1], 8.0, rtol=0, atol=atol)
        assert jnp.all(jnp.diff(g1, axis=0) >= 0.0)
        assert not jnp.allclose(g1, g2)


@pytest.mark.parametrize("family", [ad.PolynomialScheduleNetwork, ad.MonotoneScheduleNetwork])
def test_learned_endpoints_are_attained_exactly_per_pixel(family, getkey):
    shape = (1, 4, 4)
    ts = jnp.linspace(0.0, 1.0, 101)
    net = family(3, shape, key=getkey(), gamma_min=-13.3, gamma_max=5.0, learn_endpoints=True)
    assert isinstance(net.endpoints, ad.LearnedEndpoints)
    # Move the endpoints (as training does) to [-6.5, 7.0]: softplus(raw) = 13.5.
    moved = eqx.tree_at(
        lambda n: (n.endpoints.gamma_0, n.endpoints.raw_width),
        net,
        (jnp.asarray(-6.5), jnp.asarray(13.5 + np.log(-np.expm1(-13.5)))),
    )
    lo, hi = (float(g) for g in moved.endpoints())
    np.testing.assert_allclose([lo, hi], [-6.5, 7.0], rtol=1e-6)
    z1, z2 = jax.random.normal(getkey(), (2, 3))
    for z in (z1, z2):
        gammas = jax.jit(lambda n, z: jax.vmap(n(z))(ts))(moved, z)
        # Every pixel starts and ends exactly at the shared learned endpoints (the
        # polynomial's ratio is exactly 0 and 1 there; the monotone network's ratio, a
        # quotient of separately compiled differences, is 1 to a few float32 ulp, 6e-8
        # each, times the width 13.5: 8 ulp is 6.5e-6).
        atol = 0.0 if family is ad.PolynomialScheduleNetwork else 6.5e-6
        np.testing.assert_allclose(gammas[0], lo, rtol=0, atol=atol)
        np.testing.assert_allclose(gammas[-1], hi, rtol=0, atol=atol)
        assert jnp.all(jnp.diff(gammas, axis=0) >= 0.0)
    # The endpoints get gradients from a loss on the schedule (they are parameters).
    grads = jax.grad(lambda n: jnp.sum(n(z1)(0.0)) + 2 * jnp.sum(n(z1)(0.5)))(moved)
    assert grads.endpoints.gamma_0 != 0 and grads.endpoints.raw_width != 0
    # Fixed endpoints (the default, as the reference): no parameters.
    fixed = family(3, shape, key=getkey(), gamma_min=-13.3, gamma_max=5.0)
    assert isinstance(fixed.endpoints, ad.FixedEndpoints)
    assert len(jax.tree.leaves(fixed)) == len(jax.tree.leaves(net)) - 2


def test_condition_differs_across_latents_and_pixels(getkey):
    shape = (1, 4, 4)
    x = ad.from_levels(jax.random.randint(getkey(), shape, 0, 17), 17)
    mulan = _small_mulan(getkey(), shape, ad.TopKLatent(perturbation=ad.GumbelPerturbation()))

    @eqx.filter_jit
    def schedules(mulan, key):
        k1, k2, k3 = jax.random.split(key, 3)
        z1, z2 = mulan.prior.sample(k1), mulan.prior.sample(k2)
        assert mulan.encode(k3, x).shape == z1.shape == (50,)
        process = mulan.condition(z1)
        assert isinstance(process, ad.DiagonalVP)
        gammas = jax.vmap(process.schedule)(jnp.array([0.0, 0.5, 1.0]))
        return gammas, mulan.condition(z2).schedule(0.5)

    gammas, other = schedules(mulan, getkey())
    assert gammas.shape == (3, *shape)
    assert jnp.std(gammas[1]) > 1e-2  # across pixels
    assert jnp.max(jnp.abs(gammas[1] - other)) > 1e-2  # across latents
    assert jnp.all(gammas[0] == jnp.float32(-13.3)) and jnp.all(gammas[2] == 5.0)
    # MuLAN's default encoder for images, the reference's architecture: its shapes (traced
    # only; its blocks are the UNet's).
    default = eqx.filter_eval_shape(lambda: ad.MuLAN(shape, key=jax.random.key(0)))
    assert isinstance(default.encoder, ad.nn.ConvEncoder)
    assert eqx.filter_eval_shape(default.posterior_params, x).shape == (50,)


@pytest.mark.slow
def test_the_state_carries_the_schedule_of_its_latent(getkey, monkeypatch):
    # The state holds gamma(z, .) evaluated once; a hand-built LatentState(x, z) without it
    # recomputes it at each use: the same bound and the same gradients, to rounding.
    shape = (1, 4, 4)
    xs = ad.from_levels(jax.random.randint(getkey(), (3, *shape), 0, 17), 17)
    mulan = _small_mulan(getkey(), shape, ad.GaussianLatent(size=3), learn_endpoints=True)
    input_shape, cond_dim = mulan.network_shape(shape)
    net = ad.nn.MLPDenoiser(input_shape, key=getkey(), width=16, depth=1, cond_dim=cond_dim)
    key = getkey()

    def bound_and_grad(process, net):
        def loss(process, net):
            model = process.denoiser(net)
            return jnp.mean(ad.batch_nelbo(process, model, xs, key=key, num_levels=17).total)

        return eqx.filter_value_and_grad(loss)(process, net)

    u = mulan.initial_state(key, xs[0]).state
    assert isinstance(u.schedule, ad.PolynomialSchedule) and u.schedule.a.shape == shape
    assert mulan.prior_sample(key, shape).schedule is not None
    value, grads = eqx.filter_jit(bound_and_grad)(mulan, net)
    monkeypatch.setattr(ad.MuLAN, "state", lambda self, x, z: ad.LatentState(x, z))
    assert mulan.initial_state(key, xs[0]).state.schedule is None
    value_u, grads_u = eqx.filter_jit(lambda p, n: bound_and_grad(p, n))(mulan, net)
    # float32 sums in a different order: a few ulp.
    np.testing.assert_allclose(value, value_u, rtol=1e-6)
    for g, g_u in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_u)):
        np.testing.assert_allclose(g, g_u, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("latent", [ad.GaussianLatent(size=5), ad.CategoricalLatent(size=5)])
def test_latent_kl_matches_monte_carlo(latent, getkey):
    @jax.jit
    def draws(key):
        k_params, k_draws = jax.random.split(key)
        params = 1.5 * jax.random.normal(k_params, (latent.num_params,))
        zs = jax.vmap(lambda k: latent.sample(k, params))(jax.random.split(k_draws, 20_000))
        ratios = jax.vmap(lambda z: latent.log_ratio(z, params))(zs)
        if isinstance(latent, ad.GaussianLatent):
            mean, variance = params[:5], jax.nn.softplus(params[5:])
            log_q = jax.scipy.stats.norm.logpdf(zs, mean[None], jnp.sqrt(variance)[None])
            log_q = log_q.sum(-1)
        else:
            log_q = zs @ jax.nn.log_softmax(params)
        expected = log_q - jax.vmap(latent.prior_log_prob)(zs)
        return params, zs, ratios, expected, latent.kl(params)

    params, zs, ratios, expected, kl = draws(getkey())
    # The Monte Carlo mean of log q - log p is the KL, within 4 standard errors.
    assert abs(jnp.mean(ratios) - kl) < 4 * jnp.std(ratios) / math.sqrt(ratios.size)
    np.testing.assert_allclose(ratios, expected, rtol=1e-4, atol=1e-4)
    if isinstance(latent, ad.CategoricalLatent):
        # Hard one-hot samples, distributed as softmax(logits) (Gumbel-max).
        assert jnp.all(jnp.sum(zs, axis=-1) == 1.0) and jnp.all((zs == 0) | (zs == 1))
        q = jax.nn.softmax(params)
        freq_stderr = jnp.sqrt(q * (1 - q) / zs.shape[0])
        assert jnp.all(jnp.abs(jnp.mean(zs, axis=0) - q) < 4 * freq_stderr)


def test_latent_samples_have_straight_through_gradients(getkey):
    top_k = ad.TopKLatent(6, 2, ad.GumbelPerturbation())
    latents = (ad.GaussianLatent(size=6), ad.CategoricalLatent(size=6), top_k)

    @jax.jit
    def grads(key):
        k_params, k_weights, k_sample = jax.random.split(key, 3)
        weights = jax.random.normal(k_weights, (6,))
        out = []
        for latent in latents:
            params = jax.random.normal(k_params, (latent.num_params,))
            out.append(jax.grad(lambda p: jnp.dot(weights, latent.sample(k_sample, p)))(params))
        return out

    for grad in grads(getkey()):
        assert jnp.all(jnp.isfinite(grad)) and jnp.any(grad != 0.0)


def test_topk_charge_bounds_the_kl(getkey):
    n, k, num = 6, 2, 5_000
    # The charge does not depend on the noise: Gumbel for the subsets (it compiles faster);
    # the sum-of-Gamma noise's moments are checked below.
    latent = ad.TopKLatent(n, k, ad.GumbelPerturbation())
    sum_of_gamma = ad.SumOfGammaPerturbation(tau=10.0, num_terms=10)
    log_subsets = math.log(math.comb(n, k))  # 15 subsets
    peaked = jnp.array([1e4, 1e4, 0.0, 0.0, 0.0, 0.0])
    assert latent.kl(peaked) == pytest.approx(log_subsets, rel=1e-6)
    codes = 2 ** jnp.arange(n)

    @jax.jit
    def draws(key):
        k_flat, k_peaked, k_prior = jax.random.split(key, 3)

        def sample(key, logits):
            return jax.vmap(latent.sample, in_axes=(0, None))(jax.random.split(key, num), logits)

        prior = jax.vmap(latent.prior_sample)(jax.random.split(k_prior, 15_000))
        noise = sum_of_gamma(k_flat, (num, n), k)
        return sample(k_flat, jnp.zeros(n)), sample(k_peaked, peaked), prior, noise

    def kl_monte_carlo(zs):
        assert jnp.all(jnp.sum(zs, axis=-1) == k) and jnp.all((zs == 0) | (zs == 1))
        _, counts = np.unique(np.asarray(zs @ codes), return_counts=True)
        q = counts / zs.shape[0]
        # Plug-in KL(q || uniform over subsets) = log C(n, k) - H(q).
        return log_subsets + float(np.sum(q * np.log(q)))

    flat, confident, prior, noise = draws(getkey())
    # Sum-of-Gamma noise: (tau/k) (sum_i G_i - log s), G_i ~ Gamma(1/k, scale k/i), has mean
    # (tau/k)(H_s - log s) and variance (tau/k)^2 k sum_i 1/i^2; 4 standard errors (the
    # variance's from the fourth moment, below 3 var^2 for this noise, bounded loosely).
    harmonic = sum(1 / i for i in range(1, 11))
    mean, var = 5 * (harmonic - math.log(10)), 25 * 2 * sum(1 / i**2 for i in range(1, 11))
    assert abs(jnp.mean(noise) - mean) < 4 * math.sqrt(var / noise.size)
    assert abs(jnp.var(noise) - var) < 4 * var * math.sqrt(10 / noise.size)
    # Symmetric logits: q is uniform over subsets, the true KL is 0 and the charge's slack
    # is all of H(q) = log 15 (plug-in bias of H: (15 - 1) / (2 * 5000) = 1.4e-3 nats).
    assert kl_monte_carlo(flat) < 0.01
    # A confident encoder: q is a point mass and the charge is the KL exactly.
    assert kl_monte_carlo(confident) == pytest.approx(log_subsets, abs=1e-6)
    # The reference's charge, KL(softmax(logits) || Uniform(n)) = log 3 here, is below
    # the true KL log 15: not a bound.
    reference = jnp.sum(jax.nn.softmax(peaked) * jax.nn.log_softmax(peaked)) + math.log(n)
    assert reference < log_subsets - 1.0
    # The prior is uniform over the k-subsets: each count is Binomial(15000, 1/15),
    # mean 1000, sd 31.
    _, counts = np.unique(np.asarray(prior @ codes), return_counts=True)
    assert counts.size == 15 and np.all(np.abs(counts - 1000) < 4 * 31)


def test_mulan_reduces_to_vdm_exactly(getkey):
    shape = (1, 4, 4)
    linear = ad.LinearSchedule()
    mulan = ad.MuLAN(
        shape, key=getkey(), latent=ad.NoLatent(), schedule=ad.FixedLatentSchedule(linear)
    )
    assert mulan.encoder is None
    weights = jax.random.normal(getkey(), (16, 16)) / 4

    def model(u, t):  # any deterministic denoiser will do
        return jnp.tanh(weights @ u.reshape(-1) + t).reshape(u.shape)

    def net(h, t, cond):
        assert cond is None
        return model(h[:1], t)

    xs = ad.from_levels(jax.random.randint(getkey(), (8, *shape), 0, 17), 17)

    @eqx.filter_jit
    def both(mulan, key, num_steps):
        kwargs = dict(key=key, num_levels=17, num_steps=num_steps)
        vdm = ad.batch_nelbo(ad.VP(linear), model, xs, **kwargs)
        ours = ad.batch_nelbo(mulan, mulan.denoiser(net), xs, **kwargs)
        dense = ad.dense_vlb(mulan, mulan.denoiser(net), xs[0], key=key, num_steps=8, num_levels=17)
        vdm_dense = ad.dense_vlb(ad.VP(linear), model, xs[0], key=key, num_steps=8, num_levels=17)
        return (vdm, ours), (vdm_dense, dense)

    for num_steps in (None, 10):
        for vdm, ours in both(mulan, getkey(), num_steps):
            for field in ("total", "diffusion", "prior", "reconstruction", "auxiliary"):
                np.testing.assert_array_equal(getattr(ours, field), getattr(vdm, field))
            assert jnp.all(ours.auxiliary == 0.0)


def test_velocity_is_the_same_loss(getkey):
    shape = (1, 4, 4)
    x = ad.from_levels(jax.random.randint(getkey(), shape, 0, 17), 17)
    mulan = _small_mulan(getkey(), shape, ad.CategoricalLatent(size=4))

    @eqx.filter_jit
    def losses(mulan, key):
        k_z, k_noise = jax.random.split(key)
        process = mulan.condition(mulan.prior.sample(k_z))
        eps, v_hat, eps_hat = jax.random.normal(k_noise, (3, *shape))
        t = 0.37
        u = process.perturb(x, t, eps)
        gamma, dgamma = process.gamma_and_rate(x, t)
        alpha, sigma = ad.alpha_sigma(gamma)
        # Suppl. 11.1.2: 0.5 sum (1 - sigma^2) gamma' (v - v_hat)^2, v = alpha eps - sigma x,
        # is the eps-loss of the velocity prediction.
        from_v = ad.VelocityPrediction().to_eps(process, v_hat, u, t)
        velocity = 0.5 * jnp.sum((1 - sigma**2) * dgamma * (alpha * eps - sigma * x - v_hat) ** 2)
        # An eps-prediction read through the velocity path is the same eps, and score.
        through_v = ad.EpsilonAsVelocity().to_eps(process, eps_hat, u, t)
        scores = (
            ad.EpsilonAsVelocity().to_score(process, eps_hat, u, t),
            ad.EpsilonPrediction().to_score(process, eps_hat, u, t),
        )
        return (process.diffusion_loss(x, t, eps, from_v), velocity), (through_v, eps_hat), scores

    for a, b in losses(mulan, getkey()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_truncated_normal_dequantization(getkey):
    dequantization = ad.TruncatedNormalDequantization()
    x = ad.from_levels(jax.random.randint(getkey(), (3, 4, 4), 0, 256), 256)
    process = ad.VP(ad.LinearSchedule())
    scale = math.exp(-13.3 / 2)

    @jax.jit
    def check(key):
        y, log_weight = dequantization(process, key, x, 256)
        log_q = jax.scipy.stats.truncnorm.logpdf((y - x) / scale, -3.0, 3.0) - math.log(scale)
        return ad.to_levels(y, 256), log_weight, -jnp.sum(log_q)

    levels, log_weight, expected = check(getkey())
    assert jnp.all(levels == ad.to_levels(x, 256))  # inside the bin
    np.testing.assert_allclose(log_weight, expected, rtol=1e-4)
    with pytest.raises(ValueError, match="half-width"):
        ad.TruncatedNormalDequantization(gamma=-10.0)(process, getkey(), x, 256)


@pytest.mark.slow
def test_arc_length_times_are_unbiased(getkey):
    shape = (1, 4, 4)
    x = jnp.zeros(shape)
    sampler = ad.ArcLengthTimes()

    mulan = _small_mulan(getkey(), shape, ad.TopKLatent())

    @eqx.filter_jit
    def estimates(mulan, key):
        process = mulan.condition(mulan.prior.sample(key))

        def integrand(t):  # like the diffusion loss: sum_i gamma_i'(t) f_i(t)
            _, dgamma = process.gamma_and_rate(x, t)
            return jnp.sum(dgamma * (1.0 + jnp.sin(7 * t + jnp.arange(16).reshape(shape))))

        fine = jnp.linspace(0.0, 1.0, 20_001)
        exact = jax.scipy.integrate.trapezoid(jax.vmap(integrand)(fine), fine)
        ts, weights = jax.vmap(lambda u: sampler(process, x, u))((jnp.arange(4096) + 0.5) / 4096)
        return exact, ts, weights, jnp.mean(weights * jax.vmap(integrand)(ts))

    exact, ts, weights, estimate = estimates(mulan, getkey())
    assert jnp.all(jnp.diff(ts) >= 0) and jnp.all((ts >= 0) & (ts <= 1))
    assert jnp.all(weights > 0)
    # E_u[w L(t(u))] = int L dt by the change of variables t = t(u), w = dt/du: with
    # stratified u, the mean is a midpoint rule for the integral over u.
    np.testing.assert_allclose(estimate, exact, rtol=1e-3)
    with pytest.raises(ValueError, match="continuous-time"):
        model = mulan.denoiser(lambda h, t, c: h[:1])
        ad.nelbo(mulan, model, x + 1 / 256, key=getkey(), num_steps=10, times=sampler)


def test_bound_holds_for_the_optimal_denoiser(getkey):
    points, log_probs = _discrete_data()
    num = 256

    mulan = _small_mulan(getkey(), (2,), ad.GaussianLatent(size=2))

    @eqx.filter_jit
    def bounds(mulan, key):
        k_z, k_points = jax.random.split(key)
        net = _optimal_net(mulan, points, log_probs)
        z = mulan.prior.sample(k_z)
        process = mulan.condition(z)

        def model(u, t):  # the network for the fixed latent z
            return mulan.denoiser(net)(ad.LatentState(u, z), t)

        def per_point(x, key):
            xs = jnp.broadcast_to(x, (num, 2))
            key_fixed, key_full = jax.random.split(key)
            fixed = ad.batch_nelbo(process, model, xs, key=key_fixed, num_levels=NUM_LEVELS)
            full = ad.batch_nelbo(
                mulan, mulan.denoiser(net), xs, key=key_full, num_levels=NUM_LEVELS
            )
            return fixed.total, full, mulan.latent.kl(mulan.posterior_params(x))

        return jax.vmap(per_point)(points, jax.random.split(k_points, points.shape[0]))

    fixed, full, kl = bounds(mulan, getkey())
    weights = jnp.exp(log_probs)
    entropy = _entropy_bpd(log_probs)

    def mean_and_stderr(totals):
        variance = weights**2 @ (jnp.var(totals, axis=1) / num)
        return weights @ jnp.mean(totals, axis=1), jnp.sqrt(variance)

    # For a fixed z: E_P[NELBO] >= H(P), and nearly tight for the optimal denoiser (prior KL
    # and decoder overlap are below 0.01 bits); 4 standard errors of Monte Carlo slack.
    bound, stderr = mean_and_stderr(fixed)
    assert entropy - 4 * stderr <= bound < entropy + 0.01 + 4 * stderr
    # MuLAN's bound over z ~ q(z | x): above H(P) by the latent KL (p(x | z) = P(x) here).
    bound, stderr = mean_and_stderr(full.total)
    kl_bpd = kl / (2 * math.log(2))
    np.testing.assert_allclose(full.auxiliary, jnp.broadcast_to(kl_bpd[:, None], (16, num)), 1e-6)
    np.testing.assert_allclose(
        full.total, full.diffusion + full.prior + full.reconstruction + full.auxiliary, rtol=1e-5
    )
    assert entropy - 4 * stderr <= bound < entropy + weights @ kl_bpd + 0.01 + 4 * stderr


def test_importance_weighted_ode_bound(getkey):
    points, log_probs = _discrete_data()
    chosen = jnp.array([5, 10])  # two of the four most probable atoms

    # The top-k latent's log-ratio is the constant log C(6, 2) = log 15 (whatever the noise;
    # Gumbel noise compiles faster than sum-of-Gamma).
    mulan = _small_mulan(getkey(), (2,), ad.TopKLatent(6, 2, ad.GumbelPerturbation()))

    @eqx.filter_jit
    def ode_bounds(mulan, key):
        net = _optimal_net(mulan, points, log_probs)

        def bound(x, key):
            return ad.ode_bits_per_dim(
                mulan,
                ad.score_fn(mulan, mulan.denoiser(net)),
                x,
                key=key,
                num_levels=NUM_LEVELS,
                dequantization=ad.TruncatedNormalDequantization(),
                num_samples=2,
                importance_weighted=True,
                likelihood=ad.ODELikelihood(trace=ad.ExactTrace()),
            )

        return jax.vmap(bound)(points[chosen], jax.random.split(key, 2))

    # p(x | z) = P(x) for every z here, so each bound is -log2 P(x)/D plus log 15/(D ln 2),
    # plus the truncated normal's -log2 Z = 0.0039 bits, up to the ODE solver's error.
    expected = (-log_probs[chosen] + math.log(15)) / (2 * math.log(2)) + 0.0039
    np.testing.assert_allclose(ode_bounds(mulan, getkey()), expected, atol=0.01)


@pytest.mark.parametrize(
    "sampler, kwargs",
    [
        # The other samplers run on MuLAN in test_families.py; these two check the law.
        (ad.sample_ancestral, dict(num_steps=50)),
        (ad.sample_ode, dict(solve=ad.ODESolve(stepsize_controller=PID_1E3))),
    ],
)
def test_samples_follow_the_data(sampler, kwargs, getkey):
    points, log_probs = _discrete_data()

    mulan = _small_mulan(getkey(), (2,), ad.GaussianLatent(size=2))

    @eqx.filter_jit
    def draw(mulan, key):
        net = _optimal_net(mulan, points, log_probs)

        def one(key):
            score = ad.score_fn(mulan, mulan.denoiser(net))
            return mulan.decode(sampler(mulan, score, key, (2,), **kwargs), NUM_LEVELS)

        return jax.vmap(one)(jax.random.split(key, 16))

    levels = draw(mulan, getkey())
    assert levels.shape == (16, 2) and levels.dtype == jnp.int32
    weights = jnp.exp(log_probs)
    grid = ad.to_levels(points, NUM_LEVELS).astype(float)
    mean = weights @ grid
    sd = jnp.sqrt(weights @ (grid - mean[None]) ** 2)
    # The sample mean of 16 draws from P: within 4 standard errors of P's mean.
    assert jnp.all(jnp.abs(jnp.mean(levels, axis=0) - mean) < 4 * sd / 4)


# `mulan_nelbo` / `mulan_batch_nelbo` at commit bc9e089, before MuLAN became a process, on
# the draws below (scripts/record: the same model, network, data and keys).
RECORDED = {
    # latent: (totals of batch_nelbo, continuous; totals with num_steps=10; one example at
    # uniform=0.3; the same with ArcLengthTimes)
    "gaussian": (
        [15.805971145629883, 22.88304328918457, 11.22110366821289, 20.173416137695312],
        [43.26728057861328, 63.919193267822266, 50.07052230834961, 66.3499526977539],
        10.376480102539062,
        10.18584156036377,
    ),
    "categorical": (
        [20.194889068603516, 19.844030380249023, 20.301837921142578, 19.345317840576172],
        [55.22975158691406, 56.74595260620117, 71.74940490722656, 60.24153518676758],
        9.527776718139648,
        9.467967987060547,
    ),
    "topk": (
        [28.719701766967773, 30.549476623535156, 31.4915828704834, 36.96865463256836],
        [75.22053527832031, 81.69718170166016, 96.24447631835938, 106.79254150390625],
        17.237071990966797,
        17.140531539916992,
    ),
}
# The Gaussian latent with gamma in [-4, 6], where every term is far from zero.
RECORDED_TERMS = {
    None: {
        "total": [10.857293128967285, 14.967150688171387, 7.664224624633789, 12.643248558044434],
        "diffusion": [8.73875904083252, 12.644618034362793, 5.497969150543213, 10.82191562652588],
        "prior": [3.98740376e-4, 2.73763610e-4, 4.85144148e-4, 6.28636160e-4],
        "reconstruction": [2.10760379, 2.30835342, 2.15410161, 1.80670082],
        "auxiliary": [0.0105315996, 0.0139047056, 0.0116685983, 0.0140029779],
    },
    10: {
        "total": [17.270692825317383, 23.85685157775879, 13.183318138122559, 21.755643844604492],
        "diffusion": [15.152158737182617, 21.534320831298828, 11.017064094543457, 19.93430900573],
    },
}


class JaxGammaPerturbation(ad.SumOfGammaPerturbation):
    """The sum-of-Gamma noise drawn by `jax.random.gamma`, as when the numbers were
    recorded (the library's exact sampler draws other values from the same law)."""

    def __call__(self, key, shape, k):
        return self.combine(jax.random.gamma(key, 1.0 / k, (self.num_terms, *shape)), k)


@pytest.mark.slow
def test_bound_equals_the_recorded_numbers():
    shape = (1, 4, 4)
    weights = jax.random.normal(jax.random.key(1), (16, 32)) / 6

    def net(h, t, cond):
        c = 0.0 if cond is None else jnp.sum(cond * jnp.arange(cond.size)) / cond.size
        out = jnp.tanh(weights @ h.reshape(-1) + t + c)
        return jnp.concatenate([out, out]).reshape(2, 4, 4)

    xs = ad.from_levels(jax.random.randint(jax.random.key(2), (4, *shape), 0, 17), 17)
    latents = {
        "gaussian": ad.GaussianLatent(size=3),
        "categorical": ad.CategoricalLatent(size=4),
        "topk": ad.TopKLatent(perturbation=JaxGammaPerturbation()),
    }

    @eqx.filter_jit
    def bounds(mulan):
        model = mulan.denoiser(net)
        batch = [
            ad.batch_nelbo(mulan, model, xs, key=jax.random.key(4), num_levels=17, num_steps=n)
            for n in (None, 10)
        ]
        single = [
            ad.nelbo(
                mulan, model, xs[0], key=jax.random.key(5), num_levels=17, uniform=0.3, times=s
            ).total
            for s in (ad.UniformTimes(), ad.ArcLengthTimes())
        ]
        return batch, single

    # The same draws and operations in float32; the prior KL is now written with expm1 and
    # the terms are summed after conversion to bits, which moves them by < 1e-6 relative.
    rtol = 2e-6

    def small(latent, **kwargs):
        key = jax.random.key(3)
        encoder = ad.nn.MLPEncoder(shape, latent.num_params, key=key, width=8, depth=1)
        return ad.MuLAN(shape, key=key, latent=latent, encoder=encoder, **kwargs)

    for name, latent in latents.items():
        mulan = small(latent)
        (continuous, discrete), single = bounds(mulan)
        np.testing.assert_allclose(continuous.total, RECORDED[name][0], rtol=rtol, err_msg=name)
        np.testing.assert_allclose(discrete.total, RECORDED[name][1], rtol=rtol, err_msg=name)
        np.testing.assert_allclose(single, RECORDED[name][2:], rtol=rtol, err_msg=name)
    mulan = small(ad.GaussianLatent(size=3), gamma_min=-4.0, gamma_max=6.0)
    (continuous, discrete), _ = bounds(mulan)
    for num_steps, bound in ((None, continuous), (10, discrete)):
        for field, expected in RECORDED_TERMS[num_steps].items():
            np.testing.assert_allclose(
                getattr(bound, field), expected, rtol=rtol, atol=1e-9, err_msg=field
            )
