"""A multilayer-perceptron denoiser for small data of any shape."""

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

from ._embeddings import featured_channels, fourier_features, sinusoidal_embedding


class _Block(eqx.Module):
    """A pre-norm residual block whose normalised input is scaled and shifted by the
    embedding (FiLM, Perez et al. 2018): `h + W2 silu(W1 (norm(h) * (1 + a) + b))`."""

    norm: eqx.nn.LayerNorm
    film: eqx.nn.Linear
    linear1: eqx.nn.Linear
    linear2: eqx.nn.Linear

    def __init__(self, width: int, embed: int, *, key: PRNGKeyArray):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm = eqx.nn.LayerNorm(width, use_weight=False, use_bias=False)
        film = eqx.nn.Linear(embed, 2 * width, key=k1)
        self.film = eqx.tree_at(lambda m: (m.weight, m.bias), film, replace_fn=jnp.zeros_like)
        self.linear1 = eqx.nn.Linear(width, width, key=k2)
        self.linear2 = eqx.nn.Linear(width, width, key=k3)

    def __call__(self, h: Float[Array, " w"], emb: Float[Array, " e"]) -> Float[Array, " w"]:
        scale, shift = jnp.split(self.film(emb), 2)
        a = self.norm(h) * (1.0 + scale) + shift
        return h + self.linear2(jax.nn.silu(self.linear1(a)))


class MLPDenoiser(eqx.Module):
    r"""A noise-prediction MLP, `eps_hat = model(x_t, t)`, for one example of any shape.

    The input, with the Fourier features of its first `fourier_channels` entries along
    the leading axis (all of it by default) when `fourier_exponents` is not empty (see
    [`adaptive_diffusion.nn.fourier_features`][]), is flattened to one vector and lifted
    to `width` units; `depth` residual blocks follow, each with its normalised input scaled
    and shifted (FiLM) by an embedding of `t` (a sinusoidal embedding, see
    [`adaptive_diffusion.nn.sinusoidal_embedding`][] with `scale=1000`, through a small
    MLP) and, when `cond_dim > 0`, of a conditioning vector. The multiplicative time
    dependence matters: the optimal noise prediction far from the data is
    $\hat\varepsilon \approx u/\sigma_t$, a slope that changes with $t$. The last layer is
    zero-initialised, so an untrained model predicts `eps_hat = 0` exactly.

    The Fourier features are what lets the network resolve the quantisation bins. Near
    $t = 0$ the optimal $\hat\varepsilon$ is a sawtooth in $x_t$ with the period of the
    bins and a slope of $1/\sigma_t$; an MLP of $x_t$ alone cannot represent it, while
    $\sin(2^n 2\pi x)$, $\cos(2^n 2\pi x)$ with $2^{-n}$ the bin width (VDM's exponent 7
    for 256 levels; $\log_2(L / 2)$ for $L$ levels on $[-1, 1]$, see
    [`adaptive_diffusion.nn.matched_fourier_exponents`][]) make the phase of $x_t$
    within its bin an input.

    Batch with `jax.vmap(model)(x_t, t)`.
    """

    embed: eqx.nn.MLP
    cond_proj: eqx.nn.Linear | None
    lift: eqx.nn.Linear
    blocks: tuple[_Block, ...]
    out_norm: eqx.nn.LayerNorm
    out: eqx.nn.Linear
    data_shape: tuple[int, ...] = eqx.field(static=True)
    time_features: int = eqx.field(static=True)
    time_scale: float = eqx.field(static=True)
    max_period: float = eqx.field(static=True)
    cond_dim: int = eqx.field(static=True)
    fourier_exponents: tuple[float, ...] = eqx.field(static=True)
    fourier_channels: int | None = eqx.field(static=True)

    def __init__(
        self,
        data_shape: Sequence[int],
        *,
        key: PRNGKeyArray,
        width: int = 256,
        depth: int = 3,
        time_features: int = 64,
        time_scale: float = 200.0,
        max_period: float = 200.0,
        cond_dim: int = 0,
        fourier_exponents: Sequence[int | float] = (),
        fourier_channels: int | None = None,
    ):
        """**Arguments:**

        - `data_shape`: the shape of one example, e.g. `(D,)` or `(C, H, W)`.
        - `key`: a `jax.random` key for the initial weights.
        - `width`: the number of units in each hidden layer.
        - `depth`: the number of residual blocks.
        - `time_features`: the length of the sinusoidal embedding of `t`.
        - `time_scale`, `max_period`: the embedding's frequencies run log-spaced from
            `time_scale` down to `time_scale / max_period` radians per unit `t`. The
            defaults (200 down to 1) keep the network smooth in `t`: DDPM's embedding (1000
            down to 0.1) fits digits no better (held-out ELBO 2.301 +- 0.053 against 2.311 +-
            0.043 bits/dim after 6000 steps) but its `sin(1000 t)` features, of period
            0.006, make an adaptive probability-flow solve take 190 instead of 110
            evaluations (Dopri5, rtol = atol = 1e-5).
        - `cond_dim`: the length of the optional conditioning vector `cond`; `0`
            (the default) for an unconditional model.
        - `fourier_exponents`: the exponents `n` of the input's Fourier features
            `sin(2^n 2 pi x)`, `cos(2^n 2 pi x)`, any real numbers; `()` (the
            default) for none. `matched_fourier_exponents(num_levels)` gives the pair
            that resolves the bins of data with `num_levels` levels.
        - `fourier_channels`: how many leading-axis entries of the input get features:
            the data's, when the input also holds other things (MuLAN's log-SNR
            channels, an MDM's auxiliary variables: the process puts the data first);
            `None` (the default) for all.
        """
        self.data_shape = tuple(int(d) for d in data_shape)
        self.time_features = time_features
        self.time_scale = time_scale
        self.max_period = max_period
        self.cond_dim = cond_dim
        self.fourier_exponents = tuple(float(n) for n in fourier_exponents)
        self.fourier_channels = fourier_channels
        size = math.prod(self.data_shape)
        featured = math.prod(self.data_shape[1:]) * featured_channels(
            self.data_shape[0], fourier_channels
        )
        k_embed, k_cond, k_lift, k_blocks, k_out = jax.random.split(key, 5)
        self.embed = eqx.nn.MLP(time_features, width, width, 1, activation=jax.nn.silu, key=k_embed)
        self.cond_proj = (
            eqx.nn.Linear(cond_dim, time_features, key=k_cond) if cond_dim > 0 else None
        )
        self.lift = eqx.nn.Linear(
            size + 2 * len(self.fourier_exponents) * featured, width, key=k_lift
        )
        self.blocks = tuple(_Block(width, width, key=k) for k in jax.random.split(k_blocks, depth))
        self.out_norm = eqx.nn.LayerNorm(width, use_weight=False, use_bias=False)
        out = eqx.nn.Linear(width, size, key=k_out)
        self.out = eqx.tree_at(lambda m: (m.weight, m.bias), out, replace_fn=jnp.zeros_like)

    def __call__(
        self,
        x: Float[Array, "*shape"],
        t: Real[ArrayLike, ""],
        cond: Float[Array, " cond_dim"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "*shape"]:
        """**Arguments:**

        - `x`: the noisy example `x_t`, of shape `data_shape`.
        - `t`: the time, a scalar in `[0, 1]`.
        - `cond`: the conditioning vector, of shape `(cond_dim,)`; required when
            `cond_dim > 0` and forbidden otherwise.
        - `key`: ignored (this model has no randomness); accepted so that all
            denoisers share one calling convention.

        **Returns:**

        The predicted noise `eps_hat`, of the same shape as `x`.
        """
        del key
        if x.shape != self.data_shape:
            raise ValueError(f"Expected `x` of shape {self.data_shape}, got {x.shape}.")
        features = sinusoidal_embedding(
            t, self.time_features, scale=self.time_scale, max_period=self.max_period
        ).astype(x.dtype)
        if self.cond_proj is not None:
            if cond is None or cond.shape != (self.cond_dim,):
                got = None if cond is None else cond.shape
                raise ValueError(f"Expected `cond` of shape ({self.cond_dim},), got {got}.")
            features = features + self.cond_proj(cond.astype(x.dtype))
        elif cond is not None:
            raise ValueError("`cond` was given but this model was built with `cond_dim=0`.")
        emb = self.embed(features)
        featured = x[: self.fourier_channels].reshape(1, -1)
        features = fourier_features(featured, self.fourier_exponents).ravel()
        h = self.lift(jnp.concatenate([x.ravel(), features]))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(jax.nn.silu(self.out_norm(h))).reshape(x.shape)
