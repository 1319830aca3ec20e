r"""Discrete data on a grid of bin centres, and VDM's discretised Gaussian decoder.

Data with `num_levels` grey levels $k = 0, \dots, L - 1$ live at the bin centres
$x_k = -1 + (2k + 1)/L$ of $L$ bins of width $2/L$ tiling $[-1, 1]$.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jaxtyping import Array, Float, Int

from ._custom_types import Data


def bin_centres(num_levels: int) -> Float[Array, " levels"]:
    """The `num_levels` bin centres $-1 + (2k + 1)/L$, $k = 0, \\dots, L - 1$."""
    return -1.0 + (2.0 * jnp.arange(num_levels) + 1.0) / num_levels


def to_levels(x: Data, num_levels: int) -> Int[Array, "*shape"]:
    """The integer level `k` of each value of `x` (nearest bin centre)."""
    k = jnp.round((x + 1.0) * num_levels / 2.0 - 0.5).astype(jnp.int32)
    return jnp.clip(k, 0, num_levels - 1)


def from_levels(k: Int[Array, "*shape"], num_levels: int) -> Data:
    """Bin centres of integer levels `k`: $-1 + (2k + 1)/L$."""
    return -1.0 + (2.0 * k.astype(jnp.result_type(float)) + 1.0) / num_levels


def _problems(num_levels: int) -> tuple[str, str, str]:
    return (
        "Data contain NaN or infinite values; clean the batch before computing the bound.",
        "Data lie outside [-1, 1]; scale images as -1 + (2k + 1) / num_levels.",
        f"Data are off the grid of bin centres -1 + (2k + 1) / {num_levels}; pass "
        "num_levels matching the data, or map integer levels with from_levels.",
    )


def _violations(x, num_levels: int, xp=jnp) -> tuple:
    """`(non_finite, out_of_range, off_grid)` as booleans, computed with the array module
    `xp` (`jax.numpy` in a program, `numpy` on the host): off the grid by more than 1e-3
    of a bin width, which float32 rounding of the centres never reaches."""
    if num_levels < 2:
        raise ValueError(f"num_levels must be at least 2, got {num_levels}.")
    non_finite = ~xp.all(xp.isfinite(x))
    out_of_range = xp.any(xp.abs(x) > 1.0)
    levels = xp.clip(xp.round((x + 1.0) * num_levels / 2.0 - 0.5), 0, num_levels - 1)
    offset = xp.abs(x - (-1.0 + (2.0 * levels + 1.0) / num_levels))
    off_grid = xp.any(offset > 1e-3 * 2.0 / num_levels)
    return non_finite, out_of_range, off_grid


def check_discrete(x: Data, num_levels: int) -> Data:
    """Return `x` unchanged, raising (also under `jit`) if it is not discrete data.

    Fails with a message naming the problem when `x` (one example or a batch) has
    non-finite values, values outside $[-1, 1]$, or values off the grid of `num_levels`
    bin centres. A host callback: call it where data enter (`batch_nelbo` does, once per
    batch), never inside a vmapped, differentiated bound.
    """
    non_finite, out_of_range, off_grid = _violations(x, num_levels)
    # One check with three messages: a single host callback per call (the first failing
    # condition in this order names the problem).
    return eqx.branched_error_if(
        x,
        non_finite | out_of_range | off_grid,
        jnp.where(non_finite, 0, jnp.where(out_of_range, 1, 2)),
        _problems(num_levels),
    )


def check_discrete_eagerly(x: Data, num_levels: int) -> None:
    """Raise `ValueError` if concrete `x` is not discrete data; nothing while tracing.

    The check of the per-example public functions (`nelbo`, `dense_vlb`,
    `ode_bits_per_dim`): called eagerly they refuse bad data with `check_discrete`'s
    messages, and under `jit`, `vmap` or `grad` they add nothing to the computation
    (check the data where they enter instead: the data pipeline does, and so does
    `batch_nelbo`).
    """
    if isinstance(x, Tracer):
        return
    problems = _violations(np.asarray(x), num_levels, np)
    for problem, message in zip(problems, _problems(num_levels)):
        if bool(problem):
            raise ValueError(message)


def discretized_gaussian_nll(
    x: Data, mean: Data, scale: Float[Array, "..."], num_levels: int
) -> Float[Array, ""]:
    r"""$-\log p(x)$ in nats under VDM's discretised decoder, summed over dimensions.

    Each dimension is a categorical over the `num_levels` bin centres $x_k$ with logits
    $-\tfrac12 ((m - x_k)/s)^2$, for location $m$ = `mean` and scale $s$ = `scale`
    (VDM: $m = z_0/\alpha_0$, $s = \sigma_0/\alpha_0$).
    """
    centres = bin_centres(num_levels).reshape((1,) * mean.ndim + (num_levels,))
    scale = jnp.broadcast_to(scale, mean.shape)
    logits = -0.5 * jnp.square((mean[..., None] - centres) / scale[..., None])
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    k = to_levels(x, num_levels)
    return -jnp.sum(jnp.take_along_axis(log_probs, k[..., None], axis=-1))
