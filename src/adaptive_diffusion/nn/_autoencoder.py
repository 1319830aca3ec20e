r"""A small convolutional autoencoder: the latent space of latent diffusion."""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._fit import fit


class Autoencoder(eqx.Module):
    r"""Images `(C, H, W)` in $[-1, 1]$ to latents `(latent_channels, H / 2, W / 2)` and back.

    Encoder: a 3x3 convolution to `channels`, a 3x3 convolution of stride 2 to
    `2 * channels`, each followed by GELU, and a 3x3 convolution to `latent_channels`.
    Decoder: a 3x3 convolution to `2 * channels` and a 4x4 transposed convolution of
    stride 2 back to `channels` and full size, each followed by GELU, and a 3x3
    convolution to `C`. No normalisation layers, so encoding one image is a pure function
    of that image (as latent diffusion needs); the latents are unconstrained reals, and
    `latent_scale` is the standard deviation of the training latents, by which latent
    diffusion divides them so its process sees unit-scale data (Rombach et al. 2022's
    scale factor).
    """

    encoder: tuple[eqx.nn.Conv2d, ...]
    decoder: tuple[eqx.nn.Conv2d | eqx.nn.ConvTranspose2d, ...]
    latent_scale: Float[Array, ""]
    data_shape: tuple[int, int, int] = eqx.field(static=True)
    latent_channels: int = eqx.field(static=True)

    def __init__(
        self,
        data_shape: Sequence[int],
        *,
        key: PRNGKeyArray,
        latent_channels: int = 2,
        channels: int = 32,
    ):
        """**Arguments:**

        - `data_shape`: the shape `(C, H, W)` of one image, `H` and `W` even.
        - `key`: PRNG key of the initial weights.
        - `latent_channels`: channels of the latent; `latent_channels / (4 C)` is the
          latent's size relative to the image's.
        - `channels`: the first convolution's channels.
        """
        c, h, w = data_shape
        if h % 2 or w % 2:
            raise ValueError(f"Autoencoder: the image's sides must be even, got {h} x {w}.")
        if latent_channels < 1:
            raise ValueError(
                f"Autoencoder: latent_channels must be positive, got {latent_channels}."
            )
        keys = jr.split(key, 6)
        wide = 2 * channels
        self.encoder = (
            eqx.nn.Conv2d(c, channels, 3, padding=1, key=keys[0]),
            eqx.nn.Conv2d(channels, wide, 3, stride=2, padding=1, key=keys[1]),
            eqx.nn.Conv2d(wide, latent_channels, 3, padding=1, key=keys[2]),
        )
        self.decoder = (
            eqx.nn.Conv2d(latent_channels, wide, 3, padding=1, key=keys[3]),
            eqx.nn.ConvTranspose2d(wide, channels, 4, stride=2, padding=1, key=keys[4]),
            eqx.nn.Conv2d(channels, c, 3, padding=1, key=keys[5]),
        )
        self.latent_scale = jnp.asarray(1.0)
        self.data_shape = (c, h, w)
        self.latent_channels = latent_channels

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """The shape `(latent_channels, H / 2, W / 2)` of one latent."""
        _, h, w = self.data_shape
        return (self.latent_channels, h // 2, w // 2)

    def encode(self, x: Float[Array, "c h w"]) -> Float[Array, "lc lh lw"]:
        """The latent of one image (not divided by `latent_scale`)."""
        *hidden, last = self.encoder
        for conv in hidden:
            x = jax.nn.gelu(conv(x))
        return last(x)

    def decode(self, z: Float[Array, "lc lh lw"]) -> Float[Array, "c h w"]:
        """The image of one latent, on the data's scale (not clipped to $[-1, 1]$)."""
        *hidden, last = self.decoder
        for conv in hidden:
            z = jax.nn.gelu(conv(z))
        return last(z)

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, "c h w"]:
        """The reconstruction `decode(encode(x))`."""
        return self.decode(self.encode(x))


def train_autoencoder(
    images: Float[np.ndarray, "n c h w"],
    *,
    key: PRNGKeyArray,
    latent_channels: int = 2,
    channels: int = 32,
    steps: int = 3000,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
) -> Autoencoder:
    r"""An `Autoencoder` fitted by Adam to the mean squared reconstruction error of
    `images` (per element, on their $[-1, 1]$ scale), its `latent_scale` then set to the
    standard deviation of the training latents; deterministic given its arguments on a
    given backend.

    **Arguments:**

    - `images`: `(N, C, H, W)` in $[-1, 1]$.
    - `key`: PRNG key of the weights and of the batch order.
    - `latent_channels`, `channels`: see `Autoencoder`.
    - `steps`, `batch_size`, `learning_rate`: Adam's schedule (cosine decay to 0).
    """
    images = np.asarray(images, np.float32)
    key_init, key_order = jr.split(key)
    model = Autoencoder(
        images.shape[1:], key=key_init, latent_channels=latent_channels, channels=channels
    )

    def loss(model, x, _):
        return jnp.mean((jax.vmap(model)(x) - x) ** 2)

    model = fit(
        model,
        loss,
        images,
        images,
        key=key_order,
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
    )
    latents = jax.jit(jax.vmap(model.encode))(jnp.asarray(images))
    return eqx.tree_at(lambda m: m.latent_scale, model, jnp.std(latents))
