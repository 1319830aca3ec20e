"""The VDM score network: a UNet at constant resolution (Kingma et al. 2021)."""

from collections.abc import Sequence
from typing import TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

from ._embeddings import featured_channels, fourier_features, sinusoidal_embedding


_Layer = TypeVar("_Layer", bound=eqx.Module)


def _zero_init(layer: _Layer) -> _Layer:
    """Returns `layer` with all its floating-point parameters set to zero."""
    params, static = eqx.partition(layer, eqx.is_inexact_array)
    return eqx.combine(jax.tree.map(jnp.zeros_like, params), static)


def _group_norm(norm_groups: int, channels: int) -> eqx.nn.GroupNorm:
    # The most groups, up to `norm_groups`, that divide `channels` and hold at least two
    # channels each: with one channel per group, GroupNorm would remove the per-channel
    # shift by which the ResNet blocks add the time embedding.
    limit = max(1, min(norm_groups, channels // 2))
    groups = max(g for g in range(1, limit + 1) if channels % g == 0)
    return eqx.nn.GroupNorm(groups, channels, eps=1e-6)


def _stack(modules: list[_Layer]) -> _Layer:
    """Stacks structurally identical modules into one whose arrays have a leading axis,
    for `jax.lax.scan`. (Built eagerly one by one rather than with `eqx.filter_vmap`:
    the per-shape initialisers are then compiled once, which is much faster on CPU.)"""
    arrays = [eqx.filter(m, eqx.is_array) for m in modules]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *arrays)
    return eqx.combine(stacked, modules[0])


def _conv3x3(in_channels: int, out_channels: int, *, key: PRNGKeyArray) -> eqx.nn.Conv2d:
    return eqx.nn.Conv2d(in_channels, out_channels, 3, padding="SAME", key=key)


def _conv(conv: eqx.nn.Conv2d, x: Float[Array, "h w c_in"]) -> Float[Array, "h w c_out"]:
    """`conv` (stride 1, zero padding) applied to channels-last features.

    The weights keep Equinox's `(out, in, kh, kw)` layout; the convolution runs with an
    NHWC input and an HWIO kernel, the one layout for which XLA:CPU calls its fast
    convolution kernels without first transposing the operands (a transposed copy per
    convolution otherwise)."""
    kernel = jnp.transpose(conv.weight, (2, 3, 1, 0))
    out = jax.lax.conv_general_dilated(
        x[None], kernel, (1, 1), conv.padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )[0]
    return out if conv.bias is None else out + conv.bias.reshape(1, 1, -1)


def _norm(norm: eqx.nn.GroupNorm, x: Float[Array, "h w c"]) -> Float[Array, "h w c"]:
    r"""`norm` applied to channels-last features.

    With $\mu_g$ and $\sigma_g^2$ the mean and variance of $x$ over all pixels and the
    channels of group $g$, channel $c$ of group $g$ becomes
    $w_c (x_c - \mu_g) / \sqrt{\sigma_g^2 + \epsilon} + b_c$, as in `norm(x)` channels
    first. Each statistic is a mean over the pixels per channel, then over the channels of
    each group: reductions that keep the channel axis minor, which XLA:CPU vectorises,
    where one reduction over pixels and channels at once runs several times slower."""
    assert norm.weight is not None and norm.bias is not None  # `_group_norm`'s are affine
    size = x.shape[-1] // norm.groups

    def group_mean(y: Float[Array, "h w c"]) -> Float[Array, "1 1 c"]:
        per_channel = jnp.mean(y, axis=(0, 1)).reshape(norm.groups, size)
        return jnp.repeat(jnp.mean(per_channel, axis=1), size).reshape(1, 1, -1)

    centred = x - group_mean(x)
    scale = jax.lax.rsqrt(group_mean(jnp.square(centred)) + norm.eps)
    return centred * (scale * norm.weight.reshape(1, 1, -1)) + norm.bias.reshape(1, 1, -1)


class _ResnetBlock(eqx.Module):
    """GroupNorm-SiLU-conv, plus a projection of the embedding, then
    GroupNorm-SiLU-dropout-conv (zero-initialised), added to a (1x1-projected) skip."""

    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    emb_proj: eqx.nn.Linear
    norm2: eqx.nn.GroupNorm
    dropout: eqx.nn.Dropout
    conv2: eqx.nn.Conv2d
    shortcut: eqx.nn.Conv2d | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        *,
        norm_groups: int,
        dropout: float,
        key: PRNGKeyArray,
    ):
        k1, k2, k3, k4 = jr.split(key, 4)
        self.norm1 = _group_norm(norm_groups, in_channels)
        self.conv1 = _conv3x3(in_channels, out_channels, key=k1)
        self.emb_proj = _zero_init(eqx.nn.Linear(emb_dim, out_channels, use_bias=False, key=k2))
        self.norm2 = _group_norm(norm_groups, out_channels)
        self.dropout = eqx.nn.Dropout(dropout)
        self.conv2 = _zero_init(_conv3x3(out_channels, out_channels, key=k3))
        if in_channels == out_channels:
            self.shortcut = None
        else:
            self.shortcut = eqx.nn.Conv2d(in_channels, out_channels, 1, key=k4)

    def __call__(
        self,
        x: Float[Array, "h w c_in"],
        emb: Float[Array, " e"],
        *,
        key: PRNGKeyArray | None,
    ) -> Float[Array, "h w c_out"]:
        h = _conv(self.conv1, jax.nn.silu(_norm(self.norm1, x)))
        h = h + self.emb_proj(emb)[None, None]
        h = jax.nn.silu(_norm(self.norm2, h))
        h = self.dropout(h, key=key, inference=key is None)
        h = _conv(self.conv2, h)
        if self.shortcut is not None:
            x = _conv(self.shortcut, x)
        return x + h


class _AttentionBlock(eqx.Module):
    """Residual multi-head self-attention over all `h * w` positions, after a GroupNorm;
    the output projection is zero-initialised."""

    norm: eqx.nn.GroupNorm
    attention: eqx.nn.MultiheadAttention

    def __init__(self, channels: int, num_heads: int, *, norm_groups: int, key: PRNGKeyArray):
        self.norm = _group_norm(norm_groups, channels)
        attention = eqx.nn.MultiheadAttention(
            num_heads,
            channels,
            use_query_bias=True,
            use_key_bias=True,
            use_value_bias=True,
            use_output_bias=True,
            key=key,
        )
        self.attention = eqx.tree_at(lambda a: a.output_proj, attention, replace_fn=_zero_init)

    def __call__(self, x: Float[Array, "h w c"]) -> Float[Array, "h w c"]:
        height, width, c = x.shape
        seq = _norm(self.norm, x).reshape(height * width, c)
        out = self.attention(seq, seq, seq)
        return x + out.reshape(x.shape)


class UNet(eqx.Module):
    r"""The score network of Variational Diffusion Models (Kingma et al. 2021),
    predicting the noise `eps_hat = model(x_t, t)` for one image, channels first.

    All blocks run at the input resolution (no down- or upsampling):

    1. the input is concatenated with its base-2 Fourier features
       `sin(2^n 2 pi x)`, `cos(2^n 2 pi x)` for `n` in `fourier_exponents`
       (see [`adaptive_diffusion.nn.fourier_features`][]) and mapped to
       `channels` channels by a 3x3 convolution;
    2. `n_layers` ResNet blocks (the "down" path), each output kept as a skip;
    3. a middle ResNet block, multi-head self-attention over all pixels, and a
       second ResNet block;
    4. `n_layers + 1` ResNet blocks (the "up" path), each taking the
       concatenation of the running features and one skip, last-in first-out;
    5. GroupNorm, SiLU and a zero-initialised 3x3 convolution to the input's
       channel count, so an untrained model predicts `eps_hat = 0` exactly.

    Each ResNet block is GroupNorm-SiLU-conv3x3, plus a linear projection of the
    embedding (broadcast over pixels), then GroupNorm-SiLU-dropout-conv3x3 with the
    last convolution zero-initialised, added to its input (1x1-projected when the
    channel count changes). The embedding is
    `MLP(sinusoidal_embedding(t, channels, scale=1000) + W cond)`, a two-layer
    SiLU MLP of width `4 * channels`; the `W cond` term is present only when
    `cond_dim > 0`.

    Unlike VDM's `ScoreUNet` the input is not added to the output (VDM's "base
    measure" `eps_pred += z`), and the network is fed `t` directly rather than
    `gamma(t)` rescaled to `[0, 1]`. VDM's CIFAR-10 model is
    `UNet((3, 32, 32), key=key, channels=128, n_layers=32, dropout=0.1)`.

    Dropout follows Equinox: it is applied when a `key` is passed to `__call__`
    and the model is deterministic without one.

    The interface is channels first, but inside the network the features are
    channels last, `(H, W, C)`: XLA:CPU's convolution kernels take NHWC inputs and
    HWIO kernels, and XLA transposes the operands of a convolution in any other
    layout into these on every call.

    The repeated blocks keep their weights stacked (one leading axis per path) and
    run either in `jax.lax.scan`, whose compile time does not grow with `n_layers`,
    or unrolled, each block its own code (`unroll`). On XLA:CPU the scan is the slow
    choice: XLA:CPU rewrites convolutions into the layout of its kernels only in the
    entry computation, not inside the scan's while loop (its `ConvCanonicalization`
    pass; jax-ml/jax#12868), and there every convolution in another layout, which
    includes the two that autodiff makes of each one (for the input gradient, with
    the kernel's in and out axes swapped; for the weight gradient, with batch and
    features swapped), runs as a naive loop nest: two 3x3 convolutions of 64
    channels on a batch of 8 32 x 32 images, forward and backward, took 18 times as
    long in a scan as unrolled (60 times channels first). With the VDM small
    configuration (3 x 32 x 32, `n_layers=2`, 64 channels, batch 8) the whole train
    step takes 7-10 times as long scanned as unrolled (`benchmarks/train_step.py`).
    Unrolled, the blocks keep the fast kernels, at the price of a compile time that
    grows with `n_layers`: 112 s against 26 s for the train step of VDM's 32-layer
    CIFAR-10 network on 2 CPU cores (and 2.5 GiB of peak memory against 3.1 GiB).

    Batch with `jax.vmap(model)(x_t, t)`.
    """

    data_shape: tuple[int, int, int] = eqx.field(static=True)
    channels: int = eqx.field(static=True)
    n_layers: int = eqx.field(static=True)
    fourier_exponents: tuple[float, ...] = eqx.field(static=True)
    fourier_channels: int | None = eqx.field(static=True)
    cond_dim: int = eqx.field(static=True)
    unroll: bool | None = eqx.field(static=True)
    time_mlp: eqx.nn.MLP
    cond_proj: eqx.nn.Linear | None
    conv_in: eqx.nn.Conv2d
    down_blocks: _ResnetBlock  # stacked: every array has a leading axis of size n_layers
    mid_block1: _ResnetBlock
    mid_attention: _AttentionBlock
    mid_block2: _ResnetBlock
    up_blocks: _ResnetBlock  # stacked: every array has a leading axis of size n_layers + 1
    norm_out: eqx.nn.GroupNorm
    conv_out: eqx.nn.Conv2d

    def __init__(
        self,
        data_shape: Sequence[int],
        *,
        key: PRNGKeyArray,
        channels: int = 64,
        n_layers: int = 4,
        n_attention_heads: int = 1,
        dropout: float = 0.0,
        fourier_exponents: Sequence[int | float] = (6, 7),
        fourier_channels: int | None = None,
        norm_groups: int = 32,
        cond_dim: int = 0,
        unroll: bool | None = None,
    ):
        """**Arguments:**

        - `data_shape`: the shape `(C, H, W)` of one image, channels first. Only `C`
            is built into the weights; any `H, W` can be passed at call time.
        - `key`: a `jax.random` key for the initial weights.
        - `channels`: the number of feature channels in every block (VDM's
            `sm_n_embd`; 128 for CIFAR-10).
        - `n_layers`: the number of ResNet blocks in the down path, at least 1; the up
            path has `n_layers + 1` (VDM's `sm_n_layer`; 32 for CIFAR-10).
        - `n_attention_heads`: the number of heads of the middle self-attention; must
            divide `channels`.
        - `dropout`: the dropout rate inside every ResNet block (VDM's `sm_pdrop`).
        - `fourier_exponents`: the exponents `n` of the input Fourier features
            `sin(2^n 2 pi x)`, `cos(2^n 2 pi x)`; `()` for none.
        - `fourier_channels`: how many leading input channels get features: the data's,
            when the input also holds other channels (MuLAN's log-SNR channels); `None`
            (the default) for all.
        - `norm_groups`: the largest number of GroupNorm groups (32 in VDM). A layer
            with `c` channels uses the most groups, up to `norm_groups`, that divide `c`
            and hold at least two channels each (so 32 for `c = 64` or `128`), so any
            channel count works and the time embedding is never normalised away.
        - `cond_dim`: the length of the optional conditioning vector `cond` (e.g. a
            MuLAN latent), added into the time embedding; `0` (the default) for an
            unconditional model.
        - `unroll`: whether the repeated blocks run unrolled (`True`) or in
            `jax.lax.scan` (`False`); `None` (the default) unrolls when the default
            backend, `jax.default_backend()` at trace time, is the CPU, and scans
            otherwise. Both compute the same function with the same weights.
        """
        if len(data_shape) != 3:
            raise ValueError(f"`data_shape` must be (C, H, W), got {tuple(data_shape)}.")
        if n_layers < 1:
            raise ValueError(f"`n_layers` must be at least 1, got {n_layers}.")
        if channels % n_attention_heads != 0:
            raise ValueError(
                f"`n_attention_heads` ({n_attention_heads}) must divide `channels` ({channels})."
            )
        in_channels, height, width = (int(d) for d in data_shape)
        self.data_shape = (in_channels, height, width)
        self.channels = channels
        self.n_layers = n_layers
        self.fourier_exponents = tuple(float(n) for n in fourier_exponents)
        self.fourier_channels = fourier_channels
        self.cond_dim = cond_dim
        self.unroll = unroll

        emb_dim = 4 * channels
        keys = jr.split(key, 9)
        self.time_mlp = eqx.nn.MLP(
            channels,
            emb_dim,
            width_size=emb_dim,
            depth=1,
            activation=jax.nn.silu,
            final_activation=jax.nn.silu,
            key=keys[0],
        )
        self.cond_proj = eqx.nn.Linear(cond_dim, channels, key=keys[1]) if cond_dim > 0 else None
        featured = featured_channels(in_channels, fourier_channels)
        num_features = in_channels + 2 * len(self.fourier_exponents) * featured
        self.conv_in = _conv3x3(num_features, channels, key=keys[2])

        def block(in_ch: int, k: PRNGKeyArray) -> _ResnetBlock:
            return _ResnetBlock(
                in_ch, channels, emb_dim, norm_groups=norm_groups, dropout=dropout, key=k
            )

        self.down_blocks = _stack([block(channels, k) for k in jr.split(keys[3], n_layers)])
        self.mid_block1 = block(channels, keys[4])
        self.mid_attention = _AttentionBlock(
            channels, n_attention_heads, norm_groups=norm_groups, key=keys[5]
        )
        self.mid_block2 = block(channels, keys[6])
        self.up_blocks = _stack([block(2 * channels, k) for k in jr.split(keys[7], n_layers + 1)])
        self.norm_out = _group_norm(norm_groups, channels)
        self.conv_out = _zero_init(_conv3x3(channels, in_channels, key=keys[8]))

    def __call__(
        self,
        x: Float[Array, "c h w"],
        t: Real[ArrayLike, ""],
        cond: Float[Array, " cond_dim"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "c h w"]:
        """**Arguments:**

        - `x`: the noisy image `x_t`, of shape `(C, H, W)` with `C = data_shape[0]`.
        - `t`: the time, a scalar in `[0, 1]`.
        - `cond`: the conditioning vector, of shape `(cond_dim,)`; required when
            `cond_dim > 0` and forbidden otherwise.
        - `key`: a `jax.random` key for dropout; without one (the default) the model is
            deterministic, as at inference.

        **Returns:**

        The predicted noise `eps_hat`, of the same shape as `x`.
        """
        if x.shape[0] != self.data_shape[0]:
            raise ValueError(f"Expected {self.data_shape[0]} channels, got {x.shape[0]}.")
        emb = sinusoidal_embedding(t, self.channels).astype(x.dtype)
        if self.cond_proj is not None:
            if cond is None or cond.shape != (self.cond_dim,):
                got = None if cond is None else cond.shape
                raise ValueError(f"Expected `cond` of shape ({self.cond_dim},), got {got}.")
            emb = emb + self.cond_proj(cond.astype(x.dtype))
        elif cond is not None:
            raise ValueError("`cond` was given but this model was built with `cond_dim=0`.")
        emb = self.time_mlp(emb)

        if key is None:
            down_keys = mid_key1 = mid_key2 = up_keys = None
        else:
            k_down, mid_key1, mid_key2, k_up = jr.split(key, 4)
            down_keys = jr.split(k_down, self.n_layers)
            up_keys = jr.split(k_up, self.n_layers + 1)

        unroll = jax.default_backend() == "cpu" if self.unroll is None else self.unroll
        h = jnp.concatenate(
            [x, fourier_features(x[: self.fourier_channels], self.fourier_exponents)]
        )
        h = _conv(self.conv_in, jnp.transpose(h, (1, 2, 0)))

        down_params, down_static = eqx.partition(self.down_blocks, eqx.is_array)

        def down_step(carry, xs):
            params, k = xs
            out = eqx.combine(params, down_static)(carry, emb, key=k)
            return out, out

        skip0 = h
        h, skips = jax.lax.scan(down_step, h, (down_params, down_keys), unroll=unroll)
        skips = jnp.concatenate([skip0[None], skips])[::-1]

        h = self.mid_block1(h, emb, key=mid_key1)
        h = self.mid_attention(h)
        h = self.mid_block2(h, emb, key=mid_key2)

        up_params, up_static = eqx.partition(self.up_blocks, eqx.is_array)

        def up_step(carry, xs):
            params, skip, k = xs
            block = eqx.combine(params, up_static)
            return block(jnp.concatenate([carry, skip], axis=-1), emb, key=k), None

        h, _ = jax.lax.scan(up_step, h, (up_params, skips, up_keys), unroll=unroll)

        h = _conv(self.conv_out, jax.nn.silu(_norm(self.norm_out, h)))
        return jnp.transpose(h, (2, 0, 1))
