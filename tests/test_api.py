"""The public contract of ../shared/DESIGN.md, called exactly as written there."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import adaptive_diffusion as ad


@pytest.mark.slow
def test_design_contract_calls():
    key = jax.random.key(0)
    schedules = [
        ad.LinearSchedule(gamma_min=-13.3, gamma_max=5.0),
        ad.CosineSchedule(),
        ad.LearnedSchedule(key=key, gamma_min=-13.3, gamma_max=5.0),
    ]
    for schedule in schedules:
        assert isinstance(schedule, ad.AbstractSchedule)
        assert jnp.shape(schedule(0.5)) == ()
    x = ad.from_levels(jnp.array([[3, 200], [17, 128]]), 256)

    def model(x_t, t):
        return jnp.zeros_like(x_t)

    for p in (ad.VP(schedules[0]), ad.DiagonalVP(schedules[1])):
        assert isinstance(p, ad.AbstractProcess)
        u_t, eps = p.sample_marginal(key, x, 0.3)
        assert u_t.shape == eps.shape == x.shape
        assert p.prior_log_prob(p.prior_sample(key, x.shape)).shape == ()
        bound = ad.nelbo(p, model, x, key=key, num_levels=256)
        assert isinstance(bound, ad.NELBO)
        total, diffusion, prior, reconstruction, auxiliary = (
            bound.total,
            bound.diffusion,
            bound.prior,
            bound.reconstruction,
            bound.auxiliary,
        )
        assert jnp.allclose(total, diffusion + prior + reconstruction + auxiliary)
        assert auxiliary == 0.0  # the state is the data
        assert ad.dense_vlb(p, model, x, key=key, num_steps=10, num_levels=256).total.shape == ()
        score = ad.score_fn(p, model, parameterization="eps")
        result = ad.ode_log_likelihood(
            p,
            score,
            x,
            key=key,
            solver=diffrax.Tsit5(),
            rtol=1e-3,
            atol=1e-3,
            trace="hutchinson",
            num_probes=1,
        )
        assert isinstance(result, ad.LikelihoodResult)
        assert result.log_prob.shape == () and result.nfe > 0
        exact = ad.ode_log_likelihood(p, lambda u, t: -u, x, key=key, trace="exact")
        assert jnp.isfinite(exact.log_prob)


@pytest.mark.slow
def test_design_contract_nonisotropic():
    key = jax.random.key(0)
    c, h, w = 3, 4, 4
    cov = ad.GFFCovariance(shape=(c, h, w), power=1.0)
    x = ad.from_levels(jax.random.randint(key, (c, h, w), 0, 256), 256)
    assert cov.sqrt_apply(x).shape == cov.inv_sqrt_apply(x).shape == x.shape
    assert cov.logdet().shape == ()
    assert cov.as_matrix().shape == (c * h * w, c * h * w)
    p = ad.NonIsotropicVP(ad.LinearSchedule(gamma_min=-13.3, gamma_max=5.0), cov)
    assert isinstance(p, ad.AbstractProcess)
    u_t, eps = p.sample_marginal(key, x, 0.3)
    assert u_t.shape == eps.shape == x.shape
    assert p.prior_log_prob(p.prior_sample(key, x.shape)).shape == ()
    bound = ad.nelbo(p, lambda x_t, t: jnp.zeros_like(x_t), x, key=key, num_levels=256)
    assert jnp.allclose(bound.total, bound.diffusion + bound.prior + bound.reconstruction)
    exact = ad.ode_log_likelihood(p, lambda u, t: -u, x, key=key, rtol=1e-3, atol=1e-3)
    assert jnp.isfinite(exact.log_prob)


def test_design_contract_mulan():
    key = jax.random.key(0)
    data_shape = (16,)  # vectors: the default encoder is an MLP (images get the conv one)
    mulan = ad.MuLAN(data_shape, key=key, gamma_min=-13.3, gamma_max=5.0)
    defaults = ad.MuLAN(data_shape, key=key)
    assert (defaults.gamma_min, defaults.gamma_max) == (-13.3, 5.0)
    x = ad.from_levels(jax.random.randint(key, data_shape, 0, 256), 256)

    @eqx.filter_jit
    def calls(mulan, x):
        z = mulan.encode(key, x)
        process = mulan.condition(z)
        u_t, eps = process.sample_marginal(key, x, 0.3)
        zeros = lambda x_t, t: jnp.zeros_like(x_t)  # noqa: E731
        bound = ad.nelbo(process, zeros, x, key=key, num_levels=256)
        # MuLAN is itself a process: its bound adds the latent's KL as `auxiliary`.
        full = ad.nelbo(mulan, mulan.denoiser(lambda h, t, cond: h), x, key=key, num_levels=256)
        return z, process, u_t, eps, mulan.prior.sample(key), bound, full

    z, process, u_t, eps, z_prior, bound, full = calls(mulan, x)
    assert isinstance(mulan, ad.AbstractProcess)
    assert full.auxiliary > 0
    terms = full.diffusion + full.prior + full.reconstruction + full.auxiliary
    assert jnp.allclose(full.total, terms)
    assert isinstance(process, ad.DiagonalVP) and isinstance(process, ad.AbstractProcess)
    assert process.schedule(0.5).shape == data_shape  # one gamma per dimension
    assert z_prior.shape == z.shape
    assert u_t.shape == eps.shape == x.shape
    assert jnp.allclose(bound.total, bound.diffusion + bound.prior + bound.reconstruction)
