import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptive_diffusion as ad


SCHEDULES = [
    ad.LinearSchedule(),
    ad.CosineSchedule(),
    ad.LearnedSchedule(key=jax.random.key(0)),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_endpoints_and_monotone(schedule):
    t = jnp.linspace(0.0, 1.0, 1001)
    gamma = jax.vmap(schedule)(t)
    # Endpoints are attained exactly (up to float32 rounding of a ~13-magnitude value).
    np.testing.assert_allclose(gamma[0], -13.3, atol=1e-5)
    np.testing.assert_allclose(gamma[-1], 5.0, atol=1e-5)
    assert jnp.all(jnp.diff(gamma) >= 0)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_derivative_matches_finite_difference(schedule):
    # The library uses jvp; finite differences are only the check here. Central
    # differences with h = 1e-3 in float64 have error O(h^2 gamma''') ~ 1e-5 relative.
    with jax.enable_x64():
        schedule64 = jax.tree.map(
            lambda a: a.astype(jnp.float64) if isinstance(a, jax.Array) else a, schedule
        )
        for t in (0.1, 0.5, 0.9):
            _, d = ad.gamma_and_derivative(schedule64, jnp.float64(t))
            h = 1e-3
            fd = (schedule64(t + h) - schedule64(t - h)) / (2 * h)
            np.testing.assert_allclose(d, fd, rtol=1e-4)


def test_alpha_sigma_convention():
    gamma = jnp.array([-13.3, 0.0, 5.0])
    alpha, sigma = ad.alpha_sigma(gamma)
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)
    np.testing.assert_allclose(jnp.log(alpha**2 / sigma**2), -gamma, rtol=1e-5, atol=1e-5)


def test_cosine_is_clipped_cosine_log_snr():
    s = ad.CosineSchedule()
    for t in (0.2, 0.5, 0.8):
        np.testing.assert_allclose(s(t), 2 * np.log(np.tan(np.pi * t / 2)), rtol=1e-5, atol=1e-6)
    assert s(0.999) == pytest.approx(5.0)
    _, d = ad.gamma_and_derivative(s, 0.0)
    assert jnp.isfinite(d)


def test_learned_endpoints_are_parameters(getkey):
    s = ad.LearnedSchedule(key=getkey(), gamma_min=-10.0, gamma_max=4.0)

    def endpoints(sched):
        return sched(0.0), sched(1.0)

    g0, g1 = endpoints(s)
    np.testing.assert_allclose([g0, g1], [-10.0, 4.0], atol=1e-5)
    grads = jax.grad(lambda m: endpoints(m)[1] - endpoints(m)[0])(s)
    assert grads.endpoints.raw_width != 0
    # gamma_1 = gamma_0 + softplus(raw_width): moving gamma_0 keeps the width (14).
    shifted = eqx.tree_at(lambda m: m.endpoints.gamma_0, s, jnp.asarray(-8.0))
    np.testing.assert_allclose(endpoints(shifted), [-8.0, 6.0], atol=1e-5)
    # Fixed endpoints are static: no parameter, no gradient, the same values.
    fixed = ad.LearnedSchedule(key=getkey(), gamma_min=-10.0, gamma_max=4.0, learn_endpoints=False)
    assert isinstance(fixed.endpoints, ad.FixedEndpoints)
    assert len(jax.tree.leaves(fixed)) == len(jax.tree.leaves(s)) - 2
    np.testing.assert_allclose(endpoints(fixed), [-10.0, 4.0], atol=1e-5)


@pytest.mark.parametrize("cls", [ad.LinearSchedule, ad.CosineSchedule])
def test_bad_endpoints(cls):
    with pytest.raises(ValueError, match="gamma_min < gamma_max"):
        cls(gamma_min=2.0, gamma_max=1.0)
