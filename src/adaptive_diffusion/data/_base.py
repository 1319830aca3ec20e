r"""The source interface: random-access uint8 images with a known number of levels.

A source holds `images`, a uint8 array `(N, C, H, W)` (channels first, Equinox
convention), and `num_levels`, the number $L$ of grey levels per channel: every value
is an integer level $k \in \{0, \dots, L - 1\}$, which the pipeline maps to the bin
centre $-1 + (2k + 1)/L$ (see `adaptive_diffusion._discrete`).
"""

import os

import equinox as eqx
import numpy as np
from jaxtyping import Int, UInt8


class DataError(ValueError):
    """A data file or array that cannot be used: unreadable, of the wrong format, shape,
    dtype or range. The message names the file and what it should hold."""


class AbstractImageSource(eqx.Module):
    r"""Random-access images `(C, H, W)` of integer levels $0, \dots, L - 1$.

    Subclasses load the images in their `__init__` and set the two fields below;
    their validity is checked once, here, after construction.

    **Fields:**

    - `images`: uint8 array of shape `(N, C, H, W)`.
    - `num_levels`: the number $L$ of levels, $2 \le L \le 256$; every value of
      `images` is below it.
    - `labels`: an integer class per image, `(N,)`, or `None` where the data have none;
      the default feature extractor of the sample-quality metrics is a classifier of
      them (`adaptive_diffusion.metrics.train_classifier`).

    `len(source)` is $N$; `source[i]` is image `i`, `(C, H, W)`, and `source[idx]` for
    an integer array `idx` of shape `(B,)` gathers a batch `(B, C, H, W)`.
    """

    images: eqx.AbstractVar[UInt8[np.ndarray, "n c h w"]]
    num_levels: eqx.AbstractVar[int]
    labels: eqx.AbstractVar[Int[np.ndarray, " n"] | None]

    def __check_init__(self):
        if not 2 <= self.num_levels <= 256:
            raise ValueError(
                f"{type(self).__name__}: num_levels must lie in [2, 256] for uint8 images, "
                f"got {self.num_levels}."
            )
        if len(self.images) == 0:
            raise DataError(f"{type(self).__name__}: the source holds no images.")
        if self.labels is not None and self.labels.shape != (len(self.images),):
            raise DataError(
                f"{type(self).__name__}: labels have shape {self.labels.shape}; expected "
                f"({len(self.images)},), one per image."
            )
        if self.num_levels < 256 and int(self.images.max()) >= self.num_levels:
            raise DataError(
                f"{type(self).__name__}: images hold level {int(self.images.max())}, but "
                f"num_levels={self.num_levels} allows only 0 .. {self.num_levels - 1}."
            )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(
        self, index: int | Int[np.ndarray, " batch"]
    ) -> UInt8[np.ndarray, "*batch c h w"]:
        return self.images[index]

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape `(C, H, W)` of one image."""
        c, h, w = self.images.shape[1:]
        return c, h, w


def check_file(path: str | os.PathLike, expected: str) -> None:
    """Raise `FileNotFoundError` naming `path` and what it should have held."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{os.fspath(path)!r} does not exist; expected {expected}.")


def check_flat_layout(
    shape: tuple[int, ...], dtype: np.dtype, where: str, image_shape: tuple[int, int, int]
) -> None:
    """Raise `ValueError` unless `shape` and `dtype` (of the array `where`, e.g.
    `"'data' in 'file.npz'"`) are those of uint8 rows of flattened images."""
    size = image_shape[0] * image_shape[1] * image_shape[2]
    if len(shape) != 2 or shape[1] != size:
        raise DataError(
            f"{where} has shape {shape}; expected (N, {size}): one row of "
            f"{image_shape[0]} x {image_shape[1]} x {image_shape[2]} channel-first planes "
            "per image."
        )
    if dtype != np.uint8:
        raise DataError(f"{where} has dtype {dtype}; expected uint8.")


def flat_to_images(
    data: object, where: str, image_shape: tuple[int, int, int]
) -> UInt8[np.ndarray, "n c h w"]:
    """Check that `data` (the array `where`) is uint8 `(N, C*H*W)` rows of channel-first
    planes, and return it reshaped to `(N, C, H, W)`."""
    if not isinstance(data, np.ndarray):
        raise DataError(f"{where} is a {type(data).__name__}; expected a numpy array.")
    check_flat_layout(data.shape, data.dtype, where, image_shape)
    return data.reshape((len(data), *image_shape))
