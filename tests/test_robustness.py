"""Numerical robustness in float32 (all slow: `make test` keeps the HLO check of the ODE's
precision in test_likelihood.py): extreme schedule endpoints (gamma_min = -20,
gamma_max = 20) and a reduced default matmul precision (bfloat16, TF32), for the ODE
likelihood, the bounds and the training step of every family. The table is in
`docs/reliability.md`.

XLA:CPU computes every float32 dot exactly whatever `jax.default_matmul_precision` says,
so the reduced precisions are emulated (`helpers.emulated_matmul_precision`: the dots
traced at the default precision get operands rounded as a GPU's tensor cores round
them).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptive_diffusion as ad
from adaptive_diffusion import train

from .helpers import emulated_matmul_precision, marginal, mixture_score, random_mixture


SHAPE = (1, 2, 2)
EXTREME = {"gamma_min": -20.0, "gamma_max": 20.0}


def _extreme_processes():
    gff = ad.GFFCovariance(SHAPE, power=1.0)
    latent = ad.GaussianLatent(size=3)
    key = jax.random.key(0)
    encoder = ad.nn.MLPEncoder(SHAPE, latent.num_params, key=key, width=8, depth=1)
    return {
        "VP linear": ad.VP(ad.LinearSchedule(**EXTREME)),
        "VP cosine": ad.VP(ad.CosineSchedule(**EXTREME)),
        "VP learned": ad.VP(ad.LearnedSchedule(key=key, **EXTREME)),
        "NonIsotropicVP": ad.NonIsotropicVP(ad.LinearSchedule(**EXTREME), gff),
        "MuLAN": ad.MuLAN(SHAPE, key=key, latent=latent, encoder=encoder, **EXTREME),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_extreme_processes()))
def test_ode_likelihood_keeps_its_accuracy_at_extreme_endpoints(name):
    # sigma_0^2 = sigmoid(-20) = 2e-9 and alpha_1^2 = 2e-9: in float32, 1 - sigma^2 rounds
    # to 1 and a variance computed as 1 - alpha^2 would be 0. With the exact score of a
    # mixture, the ODE density must still be the analytic p_0 to the solver's accuracy
    # (1e-3 nats, as in test_families.py; the prior matches p_1 to ~1e-8 nats here).
    process = _extreme_processes()[name]
    prior = process.prior_sample(jax.random.key(0), SHAPE)
    diffused_shape = process.partition(prior)[0].shape
    data = random_mixture(jax.random.key(1), diffused_shape, scale=0.3)
    score = mixture_score(process, data)
    x = ad.from_levels(jax.random.randint(jax.random.key(2), SHAPE, 0, 16), 16)

    @eqx.filter_jit
    def check(process, key):
        _, constant = process.partition(process.initial_state(key, x).state)
        points = jax.vmap(data.sample)(jax.random.split(key, 3))

        def one(d):
            u = process.combine(d, constant)
            result = ad.ode_log_likelihood(process, score, u, key=key, trace="exact")
            return result.log_prob, marginal(process, data, 0.0, constant).log_prob(d)

        return jax.vmap(one)(points)

    got, exact = check(process, jax.random.key(3))
    assert np.all(np.isfinite(got)), got
    np.testing.assert_allclose(got, exact, atol=1e-3)


CONFIGS = {
    "vp": ("digits", EXTREME),
    "nonisotropic": ("digits_nonisotropic", EXTREME),
    "mulan": ("digits_mulan", EXTREME),
    "mdm": ("digits_mdm", {"gamma_min": -20.0}),
    "ddpm": ("digits_ddpm", {}),
}


def _digits(n: int = 16) -> jax.Array:
    images = train.make_source(train.DataConfig(), "train").images[:n]
    return jnp.asarray(-1.0 + (2.0 * images.astype(np.float32) + 1.0) / 17)


def _model(kind: str, extreme: bool):
    """The family's digits model with its weights moved off their initial values (the
    last layers start at zero, which would hide the network's matmuls)."""
    name, endpoints = CONFIGS[kind]
    overrides = [f"process.{k}={v}" for k, v in endpoints.items()] if extreme else []
    config = train.load_config(train.config_path(name), overrides)
    model = train.build_model(config, (1, 8, 8), 17, key=jax.random.key(0))
    denoiser = model.denoiser
    leaves, tree = jax.tree.flatten(eqx.filter(denoiser, eqx.is_inexact_array))
    keys = jax.random.split(jax.random.key(1), len(leaves))
    moved = [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    moved_denoiser = eqx.combine(jax.tree.unflatten(tree, moved), denoiser)
    return eqx.tree_at(lambda m: m.denoiser, model, moved_denoiser)


def _loss_and_grad(model, xs):
    def loss(model):
        return jnp.mean(model.loss(xs, key=jax.random.key(1), train=True))

    value, grads = eqx.filter_value_and_grad(loss)(model)
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array))
    norm = jnp.sqrt(sum(jnp.sum(g**2) for g in leaves))
    return value, norm


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_training_step_is_finite_at_extreme_endpoints_and_reduced_precision(kind):
    # The shipped digits config of each family, at its own endpoints and at -20 / 20: the
    # training loss (the bound in bits/dim, or the denoising loss) and its gradient are
    # finite, exactly and under emulated bfloat16 and TF32 matmuls, and the reduced
    # precisions move the loss by little (bfloat16 keeps 8 significant bits, a relative
    # 2^-8 = 0.4% per operand; measured: at most 2.2e-4 relative, so 1% is a 45x margin).
    # DDPM's schedule is its betas, with no log-SNR endpoints to move.
    xs = _digits()
    results = {}
    extremes = (False, True) if CONFIGS[kind][1] else (False,)
    for extreme in extremes:
        model = _model(kind, extreme)
        results[extreme, "exact"] = eqx.filter_jit(_loss_and_grad)(model, xs)
        for precision in ("bfloat16", "tensorfloat32"):
            with emulated_matmul_precision(precision):
                step = eqx.filter_jit(lambda m, x: _loss_and_grad(m, x))
                results[extreme, precision] = step(model, xs)
    for key, (value, norm) in results.items():
        assert np.isfinite(value) and np.isfinite(norm) and norm > 0, (key, value, norm)
    for extreme in extremes:
        exact = float(results[extreme, "exact"][0])
        for precision in ("bfloat16", "tensorfloat32"):
            np.testing.assert_allclose(
                float(results[extreme, precision][0]), exact, rtol=1e-2, err_msg=precision
            )


@pytest.mark.slow
def test_ode_likelihood_runs_at_full_precision_under_a_reduced_default():
    # The probability-flow ODE integrates the network's errors: it runs its dots at
    # "highest" whatever the default. Under emulated bfloat16 it gives the float32 figure
    # (to the solver's run-to-run agreement, equal here), while the same network's plain
    # forward pass does not: the emulation bites where nothing pins the precision.
    model = _model("vp", False)
    x = _digits(1)[0]

    def bpd(model, key):
        return model.ode_bpd(x, key=key)

    def forward(model):
        return model.model()(x, jnp.asarray(0.5))

    exact = eqx.filter_jit(bpd)(model, jax.random.key(0))
    plain = eqx.filter_jit(forward)(model)
    with emulated_matmul_precision("bfloat16"):
        reduced = eqx.filter_jit(lambda m, k: bpd(m, k))(model, jax.random.key(0))
        plain_reduced = eqx.filter_jit(lambda m: forward(m))(model)
    assert float(reduced) == float(exact)
    assert not np.allclose(plain_reduced, plain, rtol=1e-5)
