"""scikit-learn's 8x8 handwritten digits: the embedded default data set."""

from typing import Literal, cast

import numpy as np
from jaxtyping import Int, UInt8
from sklearn.datasets import load_digits
from sklearn.utils import Bunch

from ._base import AbstractImageSource


_NUM_DIGITS = 1797


class DigitsSource(AbstractImageSource):
    r"""The 1797 scikit-learn digits, `(1, 8, 8)` images with 17 levels ($0, \dots, 16$).

    The data ship with scikit-learn (`sklearn.datasets.load_digits`), so nothing is
    downloaded. The split is deterministic: a permutation of the 1797 images drawn
    from `numpy.random.default_rng(seed)` puts its first `num_test` images in the test
    split and the rest in the train split; each split keeps the original order.

    **Arguments:**

    - `split`: `"train"` or `"test"`.
    - `num_test`: the size of the test split (default 297, leaving 1500 for training).
    - `seed`: the seed of the permutation; train and test of the same seed are disjoint.

    **Fields:** `images` (uint8, `(N, 1, 8, 8)`), `num_levels` (17), `labels` (the digit,
    0 .. 9), `indices` (the positions of the images in `load_digits()`), and the
    arguments.
    """

    images: UInt8[np.ndarray, "n 1 8 8"]
    num_levels: int
    labels: Int[np.ndarray, " n"] | None
    indices: np.ndarray
    split: Literal["train", "test"]
    num_test: int
    seed: int

    def __init__(
        self, split: Literal["train", "test"] = "train", *, num_test: int = 297, seed: int = 0
    ):
        if split not in ("train", "test"):
            raise ValueError(f"DigitsSource: split must be 'train' or 'test', got {split!r}.")
        if not 0 < num_test < _NUM_DIGITS:
            raise ValueError(
                f"DigitsSource: num_test must lie in [1, {_NUM_DIGITS - 1}], got {num_test}."
            )
        bunch = cast(Bunch, load_digits())
        digits = np.asarray(bunch.images)  # float64 (1797, 8, 8), levels 0 .. 16
        permutation = np.random.default_rng(seed).permutation(len(digits))
        chosen = permutation[:num_test] if split == "test" else permutation[num_test:]
        self.indices = np.sort(chosen)
        self.images = digits[self.indices, None].astype(np.uint8)
        self.num_levels = 17
        self.labels = np.asarray(bunch.target, np.int64)[self.indices]
        self.split = split
        self.num_test = num_test
        self.seed = seed
