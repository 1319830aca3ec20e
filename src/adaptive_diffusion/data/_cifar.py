"""CIFAR-10 from the official python-pickle batches."""

import os
import pickle
from typing import Literal

import numpy as np
from jaxtyping import Int, UInt8

from ._base import AbstractImageSource, DataError, check_file, flat_to_images


_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_FILES = ("test_batch",)


def _read_batch(path: str) -> UInt8[np.ndarray, "n 3 32 32"]:
    check_file(path, "a CIFAR-10 python batch (from cifar-10-python.tar.gz)")
    with open(path, "rb") as f:
        try:
            batch = pickle.load(f, encoding="bytes")
        except Exception as e:
            raise DataError(
                f"{path!r} is not a readable pickle ({type(e).__name__}: {e}); expected a "
                "CIFAR-10 python batch."
            ) from e
    if not isinstance(batch, dict) or b"data" not in batch:
        raise DataError(
            f"{path!r} holds a {type(batch).__name__} without a b'data' entry; expected a "
            "CIFAR-10 python batch: a dict with b'data' (N, 3072) uint8 and b'labels'."
        )
    return flat_to_images(batch[b"data"], f"b'data' in {path!r}", (3, 32, 32))


class CIFAR10Source(AbstractImageSource):
    """CIFAR-10, `(3, 32, 32)` RGB images with 256 levels, from the python batches.

    `directory` holds the files of the official `cifar-10-python.tar.gz`
    (`data_batch_1` ... `data_batch_5` for training, `test_batch` for testing), or is
    the folder into which it was extracted (holding `cifar-10-batches-py/`). Each file
    is a pickled dict whose `b"data"` entry is uint8 `(N, 3072)`: per row, the red,
    green and blue 32 x 32 planes in row-major order.

    The files are unpickled, which can run arbitrary code: read only trusted copies.

    **Arguments:**

    - `directory`: the folder of batch files.
    - `split`: `"train"` (50000 images) or `"test"` (10000 images).
    """

    images: UInt8[np.ndarray, "n 3 32 32"]
    num_levels: int
    labels: Int[np.ndarray, " n"] | None
    split: Literal["train", "test"]

    def __init__(self, directory: str | os.PathLike, split: Literal["train", "test"] = "train"):
        if split not in ("train", "test"):
            raise ValueError(f"CIFAR10Source: split must be 'train' or 'test', got {split!r}.")
        directory = os.fspath(directory)
        nested = os.path.join(directory, "cifar-10-batches-py")
        if not os.path.isfile(os.path.join(directory, "test_batch")) and os.path.isdir(nested):
            directory = nested
        names = _TRAIN_FILES if split == "train" else _TEST_FILES
        batches = [_read_batch(os.path.join(directory, name)) for name in names]
        self.images = np.concatenate(batches) if len(batches) > 1 else batches[0]
        self.num_levels = 256
        self.labels = None
        self.split = split
