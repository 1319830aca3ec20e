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


_DIRECT_LEVELS = 64
"""Grids of at most this many levels are summed term by term. Forward and backward for
128 x 192 dimensions on XLA:CPU, the direct sum against `_level_nll`'s window: 9.4
against 13.8 ms at 64 levels, 32 against 17 ms at 96, and 71 against 20 ms at 256
(`benchmarks/decoder.py`)."""

_WINDOW = 12
"""Bins summed term by term on each side of the mean's nearest bin; the grid beyond
them is summed in closed form (`_log_tail`)."""

_STEEP = 2.5
r"""The slope of $-\log f$ per bin at a tail's first bin above which the tail is taken
as its first term. Above it the other terms are below $e^{-2.5}$ of the first, and the
first is at least $W + 1/2$ bins past the mean's nearest bin, so they are a negligible
part of the whole sum; below it the Euler-Maclaurin remainder is (the tests bound the
whole normaliser's error against float64 sums)."""


def _erfcx(z: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    r"""$e^{z^2} \operatorname{erfc} z$ for $z \ge 0$, without overflow: from `erfc`
    below 5 and the asymptotic series $\frac{1}{z\sqrt\pi} \sum_n (-1)^n (2n-1)!! /
    (2z^2)^n$ (seven terms) above. Relative error below $1.4 \cdot 10^{-7}$ in float64
    (at $z = 5$, against `scipy.special.erfcx`), $7 \cdot 10^{-7}$ in float32."""
    small = jnp.minimum(z, 5.0)
    large = jnp.maximum(z, 5.0)
    r = 0.5 / jnp.square(large)
    series = 1.0 + r * (-1.0 + r * (3.0 + r * (-15.0 + r * (105.0 + r * (-945.0 + r * 10395.0)))))
    asymptotic = series / (large * np.sqrt(np.pi))
    return jnp.where(
        z < 5.0, jnp.exp(jnp.square(small)) * jax.scipy.special.erfc(small), asymptotic
    )


def _log_tail(
    p: Float[Array, "*shape"], q: Float[Array, "*shape"], width: Float[Array, "*shape"]
) -> Float[Array, "*shape"]:
    r"""$\log \sum_{k=a}^{b} f(k) / f(a)$ for $f(k) = e^{-(k - u)^2 / (2w^2)}$ on the
    integers, from $p = (a - u)/w > 0$ and $q = (b - u)/w \ge p$.

    Where $f$ falls slowly at $a$ ($p/w \le$ `_STEEP` nats per bin) this is the
    Euler-Maclaurin formula $\int_a^b f + \frac{f(a) + f(b)}{2} + \frac{f'(b) - f'(a)}{12}
    - \frac{f'''(b) - f'''(a)}{720}$, relative to $f(a)$, with the integral through
    `_erfcx`; where it falls faster, the first term $f(a)$.
    """
    smooth = p <= _STEEP * width
    # The unused branch gets harmless numbers, so that it stays finite under `grad`.
    p_, q_, w = (jnp.where(smooth, v, 1.0) for v in (p, q, width))
    d = jnp.exp(0.5 * (p_ - q_) * (p_ + q_))  # f(b) / f(a)
    # The integral relative to f(a), as a difference of erf near the mean (where erfcx's
    # values are close to 1 and would cancel) and of erfcx beyond it (where erf's would).
    p_near = jnp.minimum(p_, 1.0) / np.sqrt(2.0)
    erf_difference = jax.scipy.special.erf(q_ / np.sqrt(2.0)) - jax.scipy.special.erf(p_near)
    erfcx_difference = _erfcx(p_ / np.sqrt(2.0)) - d * _erfcx(q_ / np.sqrt(2.0))
    difference = jnp.where(p_ < 1.0, jnp.exp(jnp.square(p_near)) * erf_difference, erfcx_difference)
    integral = w * np.sqrt(np.pi / 2.0) * difference
    he3_p = p_ * (jnp.square(p_) - 3.0)
    he3_q = q_ * (jnp.square(q_) - 3.0)
    corrections = (p_ - d * q_) / (12.0 * w) + (d * he3_q - he3_p) / (720.0 * w**3)
    relative = integral + 0.5 * (1.0 + d) + corrections
    return jnp.where(smooth, jnp.log(relative), 0.0)


def _level_nll(
    level: Int[Array, "*shape"],
    mean: Float[Array, "*shape"],
    scale: Float[Array, "*shape"],
    num_levels: int,
) -> Float[Array, "*shape"]:
    r"""$-\log p(x) = \log \sum_{k=0}^{L-1} e^{\ell_k - \ell_x}$ per dimension, for data at
    `level` $j$ (centre $x = x_j$) and logits $\ell_k = -(x_k - m)^2 / (2s^2)$: the
    $2W + 1$ bins around $m$'s nearest bin term by term and each tail beyond them by
    `_log_tail`, at a cost that does not grow with $L$ (grids of at most
    `_DIRECT_LEVELS` levels are summed whole).

    Each exponent is formed from the data's residual $r = x - m$ and the integer offset
    $k - j$, as $\ell_k - \ell_x = -d_k (2r + d_k) / (2s^2)$ with $d_k = (k - j)\Delta$:
    the data's own term is exactly 0 with a zero gradient, so a near-certain decoder's
    value and gradients do not come from cancelling two large logits, and float32
    resolves the distances near $m$ (in bins, $k - u$ would lose the low digits of
    $u \approx L/2$). Against float64 sums over every level it is exact to $10^{-8}$ in
    float64 for means in $[-2, 2]$ and scales of $10^{-3}$ to $10^3$ bins, and to float32
    rounding in float32 (the tests).
    """
    bin_width = 2.0 / num_levels
    batch = (1,) * mean.ndim
    j = level[..., None]
    r = (from_levels(level, num_levels) - mean)[..., None]
    s = scale[..., None]
    rho = r / s  # the residual and a bin, in scales: one division per dimension
    step = bin_width / s

    def offset(k):  # (x_k - x) / s
        return (k - j).astype(r.dtype) * step

    def exponent(k):
        a = offset(k)
        return -0.5 * a * (2.0 * rho + a)

    if num_levels <= _DIRECT_LEVELS:
        return jax.nn.logsumexp(exponent(jnp.arange(num_levels).reshape(batch + (-1,))), -1)
    # The bins around the mean's nearest, as offsets from the data's bin.
    u = j + jnp.round(jnp.clip(-r / bin_width, -num_levels, num_levels)).astype(j.dtype)
    nearest = jnp.clip(u, 0, num_levels - 1)
    offsets = jnp.arange(-_WINDOW, _WINDOW + 1).reshape(batch + (-1,))
    ks = nearest + offsets
    near = jnp.where((ks >= 0) & (ks <= num_levels - 1), exponent(ks), -jnp.inf)
    width = s / bin_width  # in bins
    right_start = nearest + _WINDOW + 1
    left_start = nearest - _WINDOW - 1
    has_right = right_start <= num_levels - 1
    has_left = left_start >= 0

    def distance(k):  # (x_k - m) / s
        return rho + offset(k)

    # Distances from the mean to each tail's ends, in scales: positive where the tail
    # exists; 1 where it does not, so that the unused branch stays finite under `grad`.
    right = exponent(right_start) + _log_tail(
        jnp.where(has_right, distance(right_start), 1.0),
        jnp.where(has_right, distance(num_levels - 1), 1.0),
        width,
    )
    left = exponent(left_start) + _log_tail(
        jnp.where(has_left, -distance(left_start), 1.0),
        jnp.where(has_left, -distance(0), 1.0),
        width,
    )
    total = jnp.logaddexp(jax.nn.logsumexp(near, -1), jnp.where(has_right, right, -jnp.inf)[..., 0])
    return jnp.logaddexp(total, jnp.where(has_left, left, -jnp.inf)[..., 0])


def discretized_gaussian_nll(
    x: Data, mean: Data, scale: Float[Array, "..."], num_levels: int
) -> Float[Array, ""]:
    r"""$-\log p(x)$ in nats under VDM's discretised decoder, summed over dimensions.

    Each dimension is a categorical over the `num_levels` bin centres $x_k$ with logits
    $-\tfrac12 ((m - x_k)/s)^2$, for location $m$ = `mean` and scale $s$ = `scale`
    (VDM: $m = z_0/\alpha_0$, $s = \sigma_0/\alpha_0$). The normaliser over the bins is
    summed near $m$ and in closed form beyond (`_level_nll`), so the cost per
    dimension does not grow with the number of levels.
    """
    scale = jnp.broadcast_to(scale, mean.shape)
    return jnp.sum(_level_nll(to_levels(x, num_levels), mean, scale, num_levels))
