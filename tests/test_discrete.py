"""VDM's discretised decoder against the sum over every level, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptive_diffusion._discrete import (
    _level_nll,
    bin_centres,
    discretized_gaussian_nll,
    from_levels,
    to_levels,
)


def _level_nll_float64(level, mean, scale, num_levels, centres=None):
    """-log p(x_level) = log sum_k exp(l_k) - l_level, l_k = -(x_k - m)^2 / (2 s^2), over
    every bin centre (or the given `centres`), in numpy float64."""
    if centres is None:
        centres = -1.0 + (2.0 * np.arange(num_levels) + 1.0) / num_levels
    logits = -0.5 * np.square((centres - mean[..., None]) / scale[..., None])
    top = logits.max(-1)
    log_z = top + np.log(np.exp(logits - top[..., None]).sum(-1))
    return log_z - logits[..., level]


def _vdm_form(x, mean, scale, num_levels):
    """The reference's decoder: a log-softmax over every level, gathered at the data."""
    centres = bin_centres(num_levels).reshape((1,) * mean.ndim + (num_levels,))
    logits = -0.5 * jnp.square((mean[..., None] - centres) / scale[..., None])
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    k = to_levels(x, num_levels)
    return -jnp.sum(jnp.take_along_axis(log_probs, k[..., None], axis=-1))


_jit_level_nll = jax.jit(_level_nll, static_argnums=3)


def _grid(num_levels):
    """Means over [-2, 2] (the data range and a bin-width-scaled margin far beyond it)
    against scales of 1e-3 to 1e3 bins, as float32-representable float64 numbers."""
    means = np.linspace(-2.0, 2.0, 401)
    widths = np.logspace(-3.0, 3.0, 73)
    mean, width = np.meshgrid(means, widths, indexing="ij")
    as_float32 = lambda a: a.astype(np.float32).astype(np.float64)  # noqa: E731
    return as_float32(mean), as_float32(width * 2.0 / num_levels)


@pytest.mark.parametrize("num_levels", [65, 256])
def test_windowed_sum_is_the_sum_over_every_level(num_levels):
    mean, scale = _grid(num_levels)
    for level in (0, num_levels // 3, num_levels - 1):
        levels = jnp.full(mean.shape, level)
        expected = _level_nll_float64(level, mean, scale, num_levels)
        with jax.enable_x64():
            got = _jit_level_nll(levels, jnp.asarray(mean), jnp.asarray(scale), num_levels)
        # The window, the Euler-Maclaurin tails and the erfcx series together: measured
        # 2.2e-9 of max(1, -log p) at worst (a width of 3.4 bins at the grid's edge).
        assert np.all(np.isfinite(np.asarray(got)))
        error = np.abs(np.asarray(got) - expected) / np.maximum(1.0, np.abs(expected))
        assert np.max(error) < 1e-8
        # In float32, against the float64 sum over the centres the library uses (the
        # data's float32 centre, as compiled, plus whole float32 bin widths: their
        # rounding, 3e-8, is 1e-4 of a scale of 0.01 bins), the error is the arithmetic's
        # rounding: measured 3.8e-7 at worst.
        centre = float(jax.jit(from_levels, static_argnums=1)(jnp.asarray(level), num_levels))
        step = float(np.float32(2.0 / num_levels))
        centres32 = centre + (np.arange(num_levels) - level) * step
        expected32 = _level_nll_float64(level, mean, scale, num_levels, centres32)
        got32 = _jit_level_nll(
            levels, jnp.asarray(mean, jnp.float32), jnp.asarray(scale, jnp.float32), num_levels
        )
        error32 = np.abs(np.asarray(got32, np.float64) - expected32)
        assert np.max(error32 / np.maximum(1.0, np.abs(expected32))) < 1e-6


@pytest.mark.parametrize("num_levels", [17, 256])
def test_decoder_value_and_gradients_are_vdms(num_levels, getkey):
    # Batches shaped like 8x8 photo patches, four examples at each gamma_0: means
    # z_0 / alpha_0 around the data, with a per-pixel scale (MuLAN's) around
    # sigma_0 / alpha_0 at gamma_0.
    gammas = np.array([-13.3, -9.0, -6.0, -2.0])
    x = from_levels(jax.random.randint(getkey(), (16, 192), 0, num_levels), num_levels)
    base = jnp.asarray(np.repeat(np.exp(0.5 * gammas), 4)[:, None], jnp.float32)
    scale = base * jnp.exp(0.3 * jax.random.normal(getkey(), x.shape))
    mean = x + scale * jax.random.normal(getkey(), x.shape)

    def value_and_grads(fn, x, mean, scale):
        per_example = jax.vmap(fn, (0, 0, 0, None))
        nll_and_grads = jax.value_and_grad(lambda m, s, x: fn(x, m, s, num_levels), (0, 1))
        return per_example(x, mean, scale, num_levels), jax.vmap(nll_and_grads)(mean, scale, x)

    got = jax.jit(value_and_grads, static_argnums=0)(discretized_gaussian_nll, x, mean, scale)
    with jax.enable_x64():
        expected = jax.jit(value_and_grads, static_argnums=0)(
            _vdm_form, *(a.astype(jnp.float64) for a in (x, mean, scale))
        )
    # float32 rounding: measured at most 6.0e-6 of each quantity's largest magnitude at a
    # gamma_0 (a gradient at 17 levels and gamma_0 = -9), as VDM's own form in float32.
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        g, e = np.asarray(g, np.float64).reshape(4, -1), np.asarray(e).reshape(4, -1)
        largest = np.max(np.abs(e), axis=1)
        assert np.all(np.max(np.abs(g - e), axis=1) <= 1e-5 * largest + 1e-30)


@pytest.mark.parametrize("num_levels", [17, 256])
def test_decoder_is_a_distribution_over_the_levels_for_any_mean_and_scale(num_levels):
    # For every mean and scale, exp(-nll) over the levels sums to one and every
    # gradient is finite: tiny and huge scales, means far outside the data range.
    mean, scale = (
        jnp.asarray(a, jnp.float32).reshape(-1, 1)
        for a in np.meshgrid([-7.0, -1.0, -0.3, 0.0, 0.997, 3.0], [1e-6, 1e-3, 0.05, 1.0, 1e3])
    )
    levels = jnp.broadcast_to(
        from_levels(jnp.arange(num_levels), num_levels), (mean.size, num_levels)
    )
    per_level = jax.vmap(jax.vmap(lambda x, m, s: discretized_gaussian_nll(x, m, s, num_levels)))

    def total(m, s):
        nll = per_level(levels, *jnp.broadcast_arrays(m, s, levels)[:2])
        return jnp.sum(nll), nll

    grads, nll = jax.jit(jax.grad(total, argnums=(0, 1), has_aux=True))(mean, scale)
    assert np.all(np.asarray(nll) >= 0.0)  # the data's own term is exactly 0
    np.testing.assert_allclose(np.asarray(jax.nn.logsumexp(-nll, axis=1)), 0.0, atol=1e-5)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
