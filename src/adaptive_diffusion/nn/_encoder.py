"""MuLAN's encoders: one example to the parameters of $q(z \\mid x)$ (a vector)."""

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ._embeddings import fourier_features
from ._unet import _AttentionBlock, _conv, _conv3x3, _group_norm, _norm, _ResnetBlock, _zero_init


class ConvEncoder(eqx.Module):
    r"""MuLAN's image encoder (the reference's `UnetEncoder`): the down path and middle of
    the VDM UNet, then one channel flattened into a linear head.

    1. The image and its base-2 Fourier features (see
       [`adaptive_diffusion.nn.fourier_features`][]) go through a 3x3 convolution to
       `channels` channels;
    2. `n_layers` ResNet blocks, then ResNet, self-attention and ResNet at constant
       resolution (the blocks of [`adaptive_diffusion.nn.UNet`][]); the blocks'
       embedding input, a time embedding in the UNet, is a learned constant vector (the
       reference feeds the embedding of $t = 0$, which is the same thing);
    3. GroupNorm, SiLU, a zero-initialised 3x3 convolution to one channel, SiLU, and a
       linear map from the $H W$ pixels to `out_features` numbers.

    The zero-initialised convolution makes an untrained encoder ignore its input (its
    output is the head's bias), as in the reference. The reference uses `channels = 128`
    (CIFAR-10) or 256 (ImageNet) and `n_layers = 4`.
    """

    embedding: Float[Array, " channels"]
    conv_in: eqx.nn.Conv2d
    blocks: tuple[_ResnetBlock, ...]
    mid_block1: _ResnetBlock
    mid_attention: _AttentionBlock
    mid_block2: _ResnetBlock
    norm_out: eqx.nn.GroupNorm
    conv_out: eqx.nn.Conv2d
    head: eqx.nn.Linear
    data_shape: tuple[int, int, int] = eqx.field(static=True)
    fourier_exponents: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        data_shape: Sequence[int],
        out_features: int,
        *,
        key: PRNGKeyArray,
        channels: int = 64,
        n_layers: int = 4,
        fourier_exponents: Sequence[int] = (6, 7),
        norm_groups: int = 32,
    ):
        """**Arguments:**

        - `data_shape`: the shape `(C, H, W)` of one image.
        - `out_features`: the length of the output (a latent family's `num_params`).
        - `key`: a `jax.random` key for the initial weights.
        - `channels`: the number of feature channels in every block.
        - `n_layers`: the number of ResNet blocks before the middle.
        - `fourier_exponents`: the exponents of the input Fourier features; `()` for none.
        - `norm_groups`: the largest number of GroupNorm groups (as in the UNet).
        """
        if len(data_shape) != 3:
            raise ValueError(f"`data_shape` must be (C, H, W), got {tuple(data_shape)}.")
        in_channels, height, width = (int(d) for d in data_shape)
        self.data_shape = (in_channels, height, width)
        self.fourier_exponents = tuple(int(n) for n in fourier_exponents)
        keys = jr.split(key, 8)
        self.embedding = jr.normal(keys[0], (channels,))
        num_features = in_channels * (1 + 2 * len(self.fourier_exponents))
        self.conv_in = _conv3x3(num_features, channels, key=keys[1])

        def block(k: PRNGKeyArray) -> _ResnetBlock:
            return _ResnetBlock(
                channels, channels, channels, norm_groups=norm_groups, dropout=0.0, key=k
            )

        self.blocks = tuple(block(k) for k in jr.split(keys[2], n_layers))
        self.mid_block1 = block(keys[3])
        self.mid_attention = _AttentionBlock(channels, 1, norm_groups=norm_groups, key=keys[4])
        self.mid_block2 = block(keys[5])
        self.norm_out = _group_norm(norm_groups, channels)
        self.conv_out = _zero_init(_conv3x3(channels, 1, key=keys[6]))
        self.head = eqx.nn.Linear(height * width, out_features, key=keys[7])

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, " out"]:
        """**Arguments:** `x`, one image of shape `data_shape`.

        **Returns:** a vector of length `out_features`.
        """
        if x.shape != self.data_shape:
            raise ValueError(f"Expected `x` of shape {self.data_shape}, got {x.shape}.")
        h = jnp.concatenate([x, fourier_features(x, self.fourier_exponents)])
        h = _conv(self.conv_in, jnp.transpose(h, (1, 2, 0)))
        emb = self.embedding.astype(x.dtype)
        for block in self.blocks:
            h = block(h, emb, key=None)
        h = self.mid_block1(h, emb, key=None)
        h = self.mid_attention(h)
        h = self.mid_block2(h, emb, key=None)
        h = _conv(self.conv_out, jax.nn.silu(_norm(self.norm_out, h)))
        return self.head(jax.nn.silu(h.reshape(-1)))


class MLPEncoder(eqx.Module):
    """An MLP encoder for examples of any shape (flattened): the counterpart of
    [`adaptive_diffusion.nn.MLPDenoiser`][] for MuLAN on vector or tiny image data."""

    mlp: eqx.nn.MLP
    data_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        data_shape: Sequence[int],
        out_features: int,
        *,
        key: PRNGKeyArray,
        width: int = 256,
        depth: int = 2,
    ):
        """**Arguments:**

        - `data_shape`: the shape of one example.
        - `out_features`: the length of the output (a latent family's `num_params`).
        - `key`: a `jax.random` key for the initial weights.
        - `width`, `depth`: the hidden width and the number of hidden layers.
        """
        self.data_shape = tuple(int(d) for d in data_shape)
        self.mlp = eqx.nn.MLP(
            math.prod(self.data_shape),
            out_features,
            width,
            depth,
            activation=jax.nn.silu,
            key=key,
        )

    def __call__(self, x: Float[Array, "*shape"]) -> Float[Array, " out"]:
        """**Arguments:** `x`, one example of shape `data_shape`.

        **Returns:** a vector of length `out_features`.
        """
        if x.shape != self.data_shape:
            raise ValueError(f"Expected `x` of shape {self.data_shape}, got {x.shape}.")
        return self.mlp(x.reshape(-1))
