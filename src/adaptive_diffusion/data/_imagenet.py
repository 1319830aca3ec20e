"""Downsampled ImageNet 32 x 32 from the official npz files."""

import os
import zipfile
from collections.abc import Sequence
from typing import Literal

import numpy as np
from jaxtyping import Int, UInt8

from ._base import AbstractImageSource, DataError, check_file, check_flat_layout, flat_to_images


_SHAPE = (3, 32, 32)
_NUM_TRAIN_FILES = 10


def _data_header(path: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the `data` entry of an npz file, read without loading it."""
    expected = "an ImageNet32 npz file with a 'data' entry (N, 3072) uint8"
    check_file(path, expected)
    try:
        with zipfile.ZipFile(path) as archive:
            if "data.npy" not in archive.namelist():
                entries = [n.removesuffix(".npy") for n in archive.namelist()]
                raise DataError(f"{path!r} has entries {entries}; expected {expected}.")
            with archive.open("data.npy") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except zipfile.BadZipFile as e:
        raise DataError(f"{path!r} is not an npz (zip) archive; expected {expected}.") from e
    return shape, dtype


class ImageNet32Source(AbstractImageSource):
    """Downsampled ImageNet 32 x 32 (Chrabaszcz et al. 2017), RGB with 256 levels.

    `directory` holds the official npz files: `train_data_batch_1.npz` ...
    `train_data_batch_10.npz` (1281167 images in all) and `val_data.npz` (50000
    images). In each, the entry `data` is uint8 `(N, 3072)`: per row, the red, green
    and blue 32 x 32 planes in row-major order. All files of a split are read into
    one array (about 3.9 GB for the whole train split); every file is checked before
    any is loaded.

    **Arguments:**

    - `directory`: the folder of npz files.
    - `split`: `"train"` or `"validation"`.
    - `train_batches`: which train files to read, numbered 1 to 10 (default: all);
      e.g. `(1,)` for a tenth of the data. Ignored for the validation split.
    """

    images: UInt8[np.ndarray, "n 3 32 32"]
    num_levels: int
    labels: Int[np.ndarray, " n"] | None
    split: Literal["train", "validation"]
    files: tuple[str, ...]

    def __init__(
        self,
        directory: str | os.PathLike,
        split: Literal["train", "validation"] = "train",
        *,
        train_batches: Sequence[int] | None = None,
    ):
        if split not in ("train", "validation"):
            raise ValueError(
                f"ImageNet32Source: split must be 'train' or 'validation', got {split!r}."
            )
        directory = os.fspath(directory)
        if split == "validation":
            names = ["val_data.npz"]
        else:
            batches = range(1, _NUM_TRAIN_FILES + 1) if train_batches is None else train_batches
            if not batches or any(not 1 <= b <= _NUM_TRAIN_FILES for b in batches):
                raise ValueError(
                    "ImageNet32Source: train_batches must be a non-empty selection of "
                    f"1 .. {_NUM_TRAIN_FILES}, got {train_batches}."
                )
            names = [f"train_data_batch_{b}.npz" for b in batches]
        paths = [os.path.join(directory, name) for name in names]
        sizes = []
        for path in paths:
            shape, dtype = _data_header(path)
            check_flat_layout(shape, dtype, f"'data' in {path!r}", _SHAPE)
            sizes.append(shape[0])
        images = np.empty((sum(sizes), *_SHAPE), np.uint8)
        start = 0
        for path, size in zip(paths, sizes):
            with np.load(path, allow_pickle=False) as loaded:
                images[start : start + size] = flat_to_images(
                    loaded["data"], f"'data' in {path!r}", _SHAPE
                )
            start += size
        self.images = images
        self.num_levels = 256
        self.labels = None
        self.split = split
        self.files = tuple(paths)
