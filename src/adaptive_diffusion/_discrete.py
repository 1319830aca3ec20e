r"""Discrete data on a grid of bin centres, and VDM's discretised Gaussian decoder.

Data with `num_levels` grey levels $k = 0, \dots, L - 1$ live at the bin centres
$x_k = -1 + (2k + 1)/L$ of $L$ bins of width $2/L$ tiling $[-1, 1]$.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
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


def check_discrete(x: Data, num_levels: int) -> Data:
    """Return `x` unchanged, raising (also under `jit`) if it is not discrete data.

    Fails with a message naming the problem when `x` has non-finite values, values
    outside $[-1, 1]$, or values off the grid of `num_levels` bin centres (by more than
    1e-3 of a bin width, which float32 rounding of the centres never reaches).
    """
    if num_levels < 2:
        raise ValueError(f"num_levels must be at least 2, got {num_levels}.")
    non_finite = ~jnp.all(jnp.isfinite(x))
    out_of_range = jnp.any(jnp.abs(x) > 1.0)
    offset = jnp.abs(x - from_levels(to_levels(x, num_levels), num_levels))
    off_grid = jnp.any(offset > 1e-3 * 2.0 / num_levels)
    # One check with three messages: a single host callback per call (the first failing
    # condition in this order names the problem).
    return eqx.branched_error_if(
        x,
        non_finite | out_of_range | off_grid,
        jnp.where(non_finite, 0, jnp.where(out_of_range, 1, 2)),
        (
            "Data contain NaN or infinite values; clean the batch before computing the bound.",
            "Data lie outside [-1, 1]; scale images as -1 + (2k + 1) / num_levels.",
            f"Data are off the grid of bin centres -1 + (2k + 1) / {num_levels}; pass "
            "num_levels matching the data, or map integer levels with from_levels.",
        ),
    )


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
