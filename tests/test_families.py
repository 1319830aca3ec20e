"""Every public core function on every process family: the forward process is swapped in
one line. A new family joins `FAMILIES` and gets these checks for free.

Gaussian-mixture data have an exact score under every process here (tests/helpers.py,
given the state's constant part), so the ODE likelihood is checked against the analytic
density; the bounds and samplers are checked for their structure (shapes, the sum of the
terms, the auxiliary term) and finiteness, their exactness being tested per family
elsewhere. One compiled program per family: on XLA:CPU compiling costs far more than
running.
"""

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptive_diffusion as ad

from .helpers import marginal, mixture_score, random_mixture


SHAPE = (1, 2, 2)
NUM_LEVELS = 16
GFF = ad.GFFCovariance(SHAPE, power=1.0)
# gamma_max = 20 (and sigma_1 = 1000 for VE) makes the prior match p_1 to ~1e-4 nats, far
# below the 1e-3 nats the likelihood check asks for (see test_likelihood.py); VE's prior
# N(0, sigma_1^2 Sigma) misses p_1 by ~1.4e-3 nats at sigma_1 = 100, measured.
LINEAR = ad.LinearSchedule(gamma_min=-13.3, gamma_max=20.0)
# Likewise beta_max = 40 for the MDMs (B(1) = 20): at the default 10 CLD's p_1 misses
# N(0, I) by 0.01-0.05 nats at these points, and at 20 the learned MDM's by ~1e-3 (its
# slowest mode decays as e^(-0.7 B)); at 40 both by ~1e-6 (measured).


def _mulan():
    latent = ad.GaussianLatent(size=3)
    key = jax.random.key(0)
    encoder = ad.nn.MLPEncoder(SHAPE, latent.num_params, key=key, width=8, depth=1)
    return ad.MuLAN(SHAPE, key=key, latent=latent, encoder=encoder, gamma_max=20.0)


# DiagonalVP is here through MuLAN, the DiagonalVP of its latent (and in test_processes.py
# and test_likelihood.py on its own); a learned MDM through CLD, which differs from it only
# in its matrices (its ODE likelihood and bound are in test_mdm.py).
FAMILIES = {
    "VP": ad.VP(LINEAR),
    "NonIsotropicVP": ad.NonIsotropicVP(LINEAR, GFF),
    "NonIsotropicVE": ad.NonIsotropicVE(
        ad.LinearSchedule(2 * math.log(0.01), 2 * math.log(1000.0)), GFF
    ),
    "MuLAN": _mulan(),
    "CLD": ad.CLD(beta_max=40.0),
}

SAMPLERS = {
    "ode": lambda p, s, k: ad.sample_ode(
        p, s, k, SHAPE, solve=ad.ODESolve(stepsize_controller=diffrax.PIDController(1e-3, 1e-3))
    ),
    "sde": lambda p, s, k: ad.sample_sde(p, s, k, SHAPE, num_steps=4),
    "ancestral": lambda p, s, k: ad.sample_ancestral(p, s, k, SHAPE, num_steps=4),
    "ancestral-beta": lambda p, s, k: ad.sample_ancestral(
        p, s, k, SHAPE, num_steps=4, variance=ad.BetaVariance(), denoise=True
    ),
    "ddim": lambda p, s, k: ad.sample_ddim(p, s, k, SHAPE, num_steps=4, denoise=True),
    "langevin": lambda p, s, k: ad.sample_annealed_langevin(
        p, s, k, SHAPE, num_noise_levels=3, num_inner=2
    ),
}


# Over 45 s each on 2 CPU cores: run by `make test-slow`; the other families stay quick.
SLOW_FAMILIES = ("VP", "NonIsotropicVP", "NonIsotropicVE", "MuLAN", "CLD")


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_FAMILIES else n for n in FAMILIES],
)
def test_every_core_function_on_every_family(name):
    process = FAMILIES[name]
    # The mixture lives on the diffused part of the state (the data, or an MDM's joint
    # (x, v)); the constant part (MuLAN's latent) comes from encoding a data point.
    prior = process.prior_sample(jax.random.key(0), SHAPE)
    diffused_shape = process.partition(prior)[0].shape
    data = random_mixture(jax.random.key(1), diffused_shape, scale=0.3)
    score = mixture_score(process, data)

    def model(u, t):  # the exact eps-prediction
        return process.eps_from_score(u, t, score(u, t))

    xs = ad.from_levels(jax.random.randint(jax.random.key(2), (3, *SHAPE), 0, NUM_LEVELS), 16)
    diffused = jax.vmap(data.sample)(jax.random.split(jax.random.key(3), 2))

    @eqx.filter_jit
    def everything(process, key):
        keys = iter(jax.random.split(key, 16))
        _, constant = process.partition(process.initial_state(next(keys), xs[0]).state)
        states = jax.vmap(lambda d: process.combine(d, constant))(diffused)

        def likelihood(u):
            result = ad.ode_log_likelihood(process, score, u, key=next(keys), trace="exact")
            diffused, constant = process.partition(u)
            exact = marginal(process, data, 0.0, constant).log_prob(diffused)
            return result.log_prob, exact

        out = {
            "likelihood": jax.vmap(likelihood)(states),
            "nelbo": ad.nelbo(process, model, xs[0], key=next(keys), num_levels=NUM_LEVELS),
            "nelbo-T": ad.nelbo(
                process, model, xs[0], key=next(keys), num_levels=NUM_LEVELS, num_steps=10
            ),
            "batch": ad.batch_nelbo(process, model, xs, key=next(keys), num_levels=NUM_LEVELS),
            "dense": ad.dense_vlb(
                process, model, xs[0], key=next(keys), num_steps=10, num_levels=NUM_LEVELS
            ),
            "ode_bpd": ad.ode_bits_per_dim(
                process,
                ad.score_fn(process, model),
                xs[0],
                key=next(keys),
                num_levels=NUM_LEVELS,
                dequantization=ad.ProcessDequantization(),
                num_samples=2,
                importance_weighted=True,
                likelihood=ad.ODELikelihood(trace=ad.ExactTrace()),
            ),
            "prior": process.prior_sample(next(keys), SHAPE),
        }
        for sampler_name, sampler in SAMPLERS.items():
            u = sampler(process, score, next(keys))
            out[sampler_name] = (u, process.decode(u, NUM_LEVELS))
        return out

    out = everything(process, jax.random.key(4))
    # The exact score makes the ODE density the process's own p_0 (given the constant part
    # of the state), to the solver's ~1e-4 nats at rtol = atol = 1e-5.
    np.testing.assert_allclose(*out["likelihood"], atol=1e-3)
    for bound_name in ("nelbo", "nelbo-T", "batch", "dense"):
        bound = out[bound_name]
        terms = bound.diffusion + bound.prior + bound.reconstruction + bound.auxiliary
        np.testing.assert_allclose(bound.total, terms, rtol=1e-6, err_msg=bound_name)
        assert np.all(np.isfinite(bound.total)), bound_name
        # The auxiliary part of the state costs nothing when the state is the data; MuLAN's
        # is its Gaussian latent's KL, an MDM's the negated entropy of q(v_0 | x).
        if name == "MuLAN":
            assert np.all(bound.auxiliary > 0), bound_name
        elif isinstance(process, ad.AbstractLinearMDM):
            entropy = 0.5 * math.log(2 * math.pi * math.e * process.aux_variance)
            expected = -process.num_aux * entropy / math.log(2.0)
            np.testing.assert_allclose(bound.auxiliary, expected, rtol=1e-6)
        else:
            np.testing.assert_array_equal(bound.auxiliary, 0.0)
    assert out["batch"].total.shape == (3,)
    assert np.isfinite(out["ode_bpd"])
    structure = jax.tree.structure(out["prior"])
    for sampler_name in SAMPLERS:
        u, levels = out[sampler_name]
        assert jax.tree.structure(u) == structure, sampler_name
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(u)), sampler_name
        assert levels.shape == SHAPE and levels.dtype == jnp.int32, sampler_name
        assert process.data(u).shape == SHAPE, sampler_name
        assert np.all((levels >= 0) & (levels < NUM_LEVELS)), sampler_name


def test_capabilities_are_checked_at_the_boundary():
    class DataOnly(ad.AbstractDataStateProcess):
        """A root-tier process: marginals and a prior, no Gaussian bound, no SDE."""

        @property
        def t_min(self) -> float:
            return 0.0

        def sample_marginal(self, key, u0, t):
            eps = jax.random.laplace(key, u0.shape)
            return u0 + t * eps, eps

        def prior_sample(self, key, shape):
            return jax.random.laplace(key, shape)

        def prior_log_prob(self, u):
            return -jnp.sum(jnp.abs(u))

        def decode(self, u, num_levels):
            return ad.to_levels(u, num_levels)

    process = DataOnly()
    u, eps = process.sample_marginal(jax.random.key(0), jnp.zeros(SHAPE), 0.5)
    assert u.shape == eps.shape == SHAPE
    with pytest.raises(TypeError, match="nelbo needs .*AbstractLinearGaussianProcess"):
        ad.require_capability(process, ad.AbstractLinearGaussianProcess, "nelbo")
    # Under the tests' runtime type checking the annotations refuse it first; without it,
    # the core's own check above does, with its message.
    x = jnp.zeros(SHAPE) + 1 / 16
    with pytest.raises(TypeError, match="AbstractLinearGaussianProcess"):
        ad.nelbo(process, lambda u, t: u, x, key=jax.random.key(0), num_levels=16)
    with pytest.raises(TypeError, match="AbstractSDEProcess"):
        ad.sample_ode(process, lambda u, t: u, jax.random.key(0), SHAPE)
    with pytest.raises(TypeError, match="AbstractSDEProcess"):
        ad.ode_log_likelihood(process, lambda u, t: u, x, key=jax.random.key(0))
