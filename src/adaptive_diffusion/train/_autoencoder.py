"""Training, saving and loading the autoencoder of latent diffusion, with its reconstruction
error on the test split."""

import dataclasses
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from .._discrete import to_levels
from ..data import AbstractImageSource, levels_to_centres
from ..nn import Autoencoder, train_autoencoder
from ._autoencoder_files import save_autoencoder
from ._config import Config
from ._plots import save_image_grid
from ._sources import make_source


@dataclasses.dataclass(frozen=True)
class Reconstruction:
    """An autoencoder's reconstruction error on held-out images.

    **Fields:** `mse`, the mean squared error per element on the $[-1, 1]$ scale;
    `psnr`, $10 \\log_{10}(4 / \\mathrm{mse})$ in dB (the range is 2); `level_accuracy`,
    the fraction of elements decoded to their exact level; `num_images`.
    """

    mse: float
    psnr: float
    level_accuracy: float
    num_images: int

    def __str__(self) -> str:
        return (
            f"reconstruction MSE {self.mse:.5f} (PSNR {self.psnr:.2f} dB), "
            f"{100 * self.level_accuracy:.2f}% of pixels at their exact level, "
            f"over {self.num_images} test images"
        )


def reconstruction(autoencoder: Autoencoder, source: AbstractImageSource) -> Reconstruction:
    """The reconstruction error of `autoencoder` on every image of `source`."""
    x = jnp.asarray(levels_to_centres(source.images, source.num_levels))
    x_hat = jax.jit(jax.vmap(autoencoder))(x)
    mse = float(jnp.mean((x_hat - x) ** 2))
    exact = to_levels(x_hat, source.num_levels) == jnp.asarray(source.images)
    return Reconstruction(mse, float(10 * np.log10(4.0 / mse)), float(jnp.mean(exact)), len(x))


def fit_autoencoder(
    config: Config,
    workdir: str | os.PathLike,
    *,
    latent_channels: int = 2,
    channels: int = 32,
    steps: int = 3000,
    seed: int = 0,
) -> tuple[Autoencoder, Reconstruction]:
    """Train an autoencoder on the train split of `config.data` (`nn.train_autoencoder`),
    and write to `workdir` its weights (`autoencoder.eqx`), its options and test-split
    reconstruction error (`autoencoder.json`), and a picture of test images above their
    reconstructions (`reconstructions.png`)."""
    workdir = pathlib.Path(workdir)
    train_source = make_source(config.data, "train")
    test_source = make_source(config.data, "test")
    autoencoder = train_autoencoder(
        levels_to_centres(train_source.images, train_source.num_levels),
        key=jax.random.key(seed),
        latent_channels=latent_channels,
        channels=channels,
        steps=steps,
    )
    error = reconstruction(autoencoder, test_source)
    save_autoencoder(
        workdir,
        autoencoder,
        channels=channels,
        report=dict(steps=steps, seed=seed, test=dataclasses.asdict(error)),
    )
    originals = test_source.images[:8]
    decoded = jax.vmap(autoencoder)(
        jnp.asarray(levels_to_centres(originals, test_source.num_levels))
    )
    levels = np.concatenate([originals, np.asarray(to_levels(decoded, test_source.num_levels))])
    save_image_grid(levels, test_source.num_levels, workdir / "reconstructions.png", columns=8)
    return autoencoder, error
