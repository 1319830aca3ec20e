r"""A small convolutional classifier whose penultimate layer serves as image features."""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray


class Classifier(eqx.Module):
    r"""Images `(C, H, W)` in $[-1, 1]$ to class logits, through `features`.

    Three 3x3 convolutions (`channels`, `2 * channels`, `2 * channels`; the last two of
    stride 2 where the image is at least 16 pixels on a side), each followed by GELU; the
    spatial mean and standard deviation of the last map, a linear layer to `feature_dim`
    and GELU give the features; a linear layer gives the logits. Mean and deviation pooling
    keep the features sensitive to contrast and texture, not only to the mean activation.
    """

    convs: tuple[eqx.nn.Conv2d, ...]
    hidden: eqx.nn.Linear
    head: eqx.nn.Linear
    data_shape: tuple[int, int, int] = eqx.field(static=True)

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int,
        *,
        key: PRNGKeyArray,
        channels: int = 32,
        feature_dim: int = 64,
    ):
        """**Arguments:**

        - `data_shape`: the shape `(C, H, W)` of one image.
        - `num_classes`: the number of classes, at least 2.
        - `key`: PRNG key of the initial weights.
        - `channels`: the first convolution's channels.
        - `feature_dim`: the size $d$ of the features.
        """
        c, h, w = data_shape
        if num_classes < 2:
            raise ValueError(f"Classifier: num_classes must be at least 2, got {num_classes}.")
        keys = jr.split(key, 5)
        stride = 2 if min(h, w) >= 16 else 1
        widths = (c, channels, 2 * channels, 2 * channels)
        self.convs = tuple(
            eqx.nn.Conv2d(
                widths[i], widths[i + 1], 3, stride=1 if i == 0 else stride, padding=1, key=keys[i]
            )
            for i in range(3)
        )
        self.hidden = eqx.nn.Linear(4 * channels, feature_dim, key=keys[3])
        self.head = eqx.nn.Linear(feature_dim, num_classes, key=keys[4])
        self.data_shape = (c, h, w)

    def features(self, x: Float[Array, "c h w"]) -> Float[Array, " feature_dim"]:
        """The penultimate layer: `feature_dim` features of one image."""
        for conv in self.convs:
            x = jax.nn.gelu(conv(x))
        # The deviation's 1e-6 floor keeps its gradient finite on a constant map.
        deviation = jnp.sqrt(jnp.var(x, axis=(1, 2)) + 1e-6)
        pooled = jnp.concatenate([jnp.mean(x, axis=(1, 2)), deviation])
        return jax.nn.gelu(self.hidden(pooled))

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, " num_classes"]:
        """The class logits of one image."""
        return self.head(self.features(x))
