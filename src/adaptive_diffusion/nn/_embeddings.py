"""Parameter-free embeddings shared by the denoisers: of the time `t` and of the input."""

import math
from collections.abc import Sequence

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Real


def sinusoidal_embedding(
    t: Real[ArrayLike, ""],
    dim: int,
    *,
    scale: float = 1000.0,
    max_period: float = 10_000.0,
) -> Float[Array, " dim"]:
    r"""Sinusoidal embedding of a scalar time (Vaswani et al. 2017; Ho et al. 2020).

    With `s = scale * t`, `k = dim // 2` and frequencies
    `w_j = max_period ** (-j / (k - 1))` for `j = 0, ..., k - 1` (from `1` down to
    `1 / max_period`), this returns

    $$[\sin(s w_0), \dots, \sin(s w_{k-1}), \cos(s w_0), \dots, \cos(s w_{k-1})]$$

    followed by a single zero when `dim` is odd. The default `scale=1000` maps
    `t` in `[0, 1]` onto the range of DDPM's integer timesteps, as in VDM.

    **Arguments:**

    - `t`: the time, a scalar (typically in `[0, 1]`).
    - `dim`: the length of the embedding, at least 1.
    - `scale`: the factor applied to `t` before the sinusoids.
    - `max_period`: the longest period, in units of `scale * t`.

    **Returns:**

    A vector of shape `(dim,)`.
    """
    if dim < 1:
        raise ValueError(f"`dim` must be at least 1, got {dim}.")
    half = dim // 2
    exponent = -math.log(max_period) / max(half - 1, 1)
    freqs = jnp.exp(exponent * jnp.arange(half, dtype=float))
    arg = scale * jnp.asarray(t, dtype=float) * freqs
    emb = jnp.concatenate([jnp.sin(arg), jnp.cos(arg)])
    if dim % 2 == 1:
        emb = jnp.concatenate([emb, jnp.zeros((1,), emb.dtype)])
    return emb


def fourier_features(
    x: Float[Array, " c *rest"], exponents: Sequence[int | float]
) -> Float[Array, " f *rest"]:
    r"""Base-2 Fourier features of an input, channel by channel (VDM, Kingma et al. 2021).

    For each channel `x_c` and each exponent `n` this computes
    `sin(2^n 2 pi x_c)` and `cos(2^n 2 pi x_c)` elementwise. With data in `[-1, 1]`
    and 8-bit quantisation (bin width `2/255`), exponents 6 and 7 resolve the fine
    detail that the likelihood depends on. The result has
    `f = 2 * c * len(exponents)` channels: first all sines, then all cosines, each
    ordered channel-major (`(c0, n0), (c0, n1), ..., (c1, n0), ...`).

    **Arguments:**

    - `x`: the input, channels first, shape `(c, *rest)`.
    - `exponents`: the exponents `n` (integers for VDM's features, but any real number
      works); may be empty, giving zero channels.

    **Returns:**

    An array of shape `(2 * c * len(exponents), *rest)` and the dtype of `x`.
    """
    freqs = 2.0 * math.pi * 2.0 ** jnp.asarray(tuple(exponents), dtype=x.dtype)
    freqs = freqs.reshape((1, len(exponents)) + (1,) * (x.ndim - 1))
    h = (x[:, None] * freqs).reshape((x.shape[0] * len(exponents),) + x.shape[1:])
    return jnp.concatenate([jnp.sin(h), jnp.cos(h)])


def matched_fourier_exponents(num_levels: int) -> tuple[float, float]:
    r"""The Fourier exponents that resolve the bins of data with `num_levels` levels.

    Levels $k$ sit at the bin centres $-1 + (2k + 1)/L$, $2/L$ apart; the feature
    $\sin(2^n 2\pi x)$ has that period for $2^n = L/2$. Returns
    $(\log_2(L/2) - 1, \log_2(L/2))$: one period per bin and one per two bins, so every
    bin centre has the same phase in the first and alternate bins are told apart by the
    second. For $L = 256$ this is VDM's $(6, 7)$; for the 17-level digits, $(2.09, 3.09)$.
    """
    if num_levels < 2:
        raise ValueError(f"matched_fourier_exponents needs num_levels >= 2, got {num_levels}.")
    n = math.log2(num_levels / 2)
    return (n - 1.0, n)


def featured_channels(channels: int, fourier_channels: int | None) -> int:
    """How many of an input's `channels` leading channels get Fourier features: the
    length of `x[:fourier_channels]` (all of them for `None`)."""
    return channels if fourier_channels is None else min(fourier_channels, channels)
