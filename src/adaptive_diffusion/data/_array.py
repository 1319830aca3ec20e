"""Images already in memory, or in a `.npy` / `.npz` file."""

import os

import numpy as np
from jaxtyping import Int, UInt8

from ._base import AbstractImageSource, DataError, check_file


class ArraySource(AbstractImageSource):
    r"""In-memory integer images `(N, C, H, W)`.

    **Arguments:**

    - `images`: an integer array of shape `(N, C, H, W)` (channels first) with values
      in $0, \dots, L - 1$; stored as uint8.
    - `num_levels`: the number of levels $L$, $2 \le L \le 256$.

    Channels-last arrays `(N, H, W, C)` must be transposed first:
    `images.transpose(0, 3, 1, 2)`.
    """

    images: UInt8[np.ndarray, "n c h w"]
    num_levels: int
    labels: Int[np.ndarray, " n"] | None

    def __init__(self, images: np.ndarray, num_levels: int):
        images = np.asarray(images)
        if images.ndim != 4:
            raise DataError(
                f"ArraySource: images have shape {images.shape}; expected 4 axes "
                "(N, C, H, W), channels first."
            )
        if not np.issubdtype(images.dtype, np.integer):
            raise DataError(
                f"ArraySource: images have dtype {images.dtype}; expected integer levels "
                f"0 .. {num_levels - 1} (uint8), not values already scaled to [-1, 1]."
            )
        if images.size and (images.min() < 0 or images.max() >= num_levels):
            raise DataError(
                f"ArraySource: images hold values in [{images.min()}, {images.max()}]; "
                f"expected levels 0 .. {num_levels - 1} for num_levels={num_levels}."
            )
        self.images = images.astype(np.uint8, copy=False)
        self.num_levels = num_levels
        self.labels = None

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, num_levels: int, *, key: str = "images"
    ) -> "ArraySource":
        """Images from a `.npy` file, or from entry `key` of a `.npz` file.

        **Arguments:**

        - `path`: the file; it holds an integer array `(N, C, H, W)`.
        - `num_levels`: the number of levels.
        - `key`: the entry of a `.npz` file holding the images.
        """
        check_file(path, "a .npy or .npz file of integer images (N, C, H, W)")
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                if key not in loaded.files:
                    raise DataError(
                        f"{os.fspath(path)!r} has entries {loaded.files}; expected {key!r}."
                    )
                images = loaded[key]
        else:
            images = loaded
        try:
            return cls(images, num_levels)
        except ValueError as e:
            raise DataError(f"{os.fspath(path)!r}: {e}") from None
