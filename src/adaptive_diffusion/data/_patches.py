"""Natural-image patches from the two photographs bundled with scikit-learn."""

from typing import Literal

import numpy as np
from jaxtyping import Int, UInt8
from sklearn.datasets import load_sample_images

from ._base import AbstractImageSource


class SampleImagePatchesSource(AbstractImageSource):
    r"""RGB patches `(3, P, P)` with 256 levels, cut from scikit-learn's sample photos.

    `sklearn.datasets.load_sample_images` bundles two photographs (`china.jpg`,
    `flower.jpg`, each 427 x 640). Each photo of width $W$ is split by columns at
    $b = \lfloor (1 - \text{test\_fraction})\, W \rfloor$: train patches lie in columns
    $[0, b)$, test patches in $[b + \text{guard}, W)$, so no test pixel (nor any pixel
    within `guard` columns of one) is seen in training. Inside its region, a split
    takes every patch whose top-left corner lies on the grid of step `stride` from the
    region's top-left corner; `stride = patch_size` (the default) gives non-overlapping
    patches. The order is photo, then row, then column; nothing is random.

    With the defaults, there are 1560 train and 468 test patches of 16 x 16, or 390 and
    104 of 32 x 32.

    **Arguments:**

    - `split`: `"train"` or `"test"`.
    - `patch_size`: the side $P$ of the square patches (e.g. 16 or 32).
    - `stride`: the step between patch corners; defaults to `patch_size`.
    - `test_fraction`: the fraction of each photo's width given to the test region.
    - `guard`: the width in pixels of the unused band between the two regions.

    **Fields:** `images` (uint8, `(N, 3, P, P)`), `num_levels` (256), `origins`
    (`(N, 3)`: photo index, row and column of each patch's top-left pixel), `labels`
    (the source region, 0 .. 7: `4 * photo + band`, with `band` the quarter of the
    photo's height holding the patch's top row; train and test patches share the bands,
    as the split is by columns), and the arguments.
    """

    images: UInt8[np.ndarray, "n 3 p p"]
    num_levels: int
    origins: Int[np.ndarray, "n 3"]
    labels: Int[np.ndarray, " n"] | None
    split: Literal["train", "test"]
    patch_size: int
    stride: int
    test_fraction: float
    guard: int

    def __init__(
        self,
        split: Literal["train", "test"] = "train",
        *,
        patch_size: int = 16,
        stride: int | None = None,
        test_fraction: float = 0.25,
        guard: int = 16,
    ):
        stride = patch_size if stride is None else stride
        name = type(self).__name__
        if split not in ("train", "test"):
            raise ValueError(f"{name}: split must be 'train' or 'test', got {split!r}.")
        if patch_size < 1 or stride < 1 or guard < 0:
            raise ValueError(
                f"{name}: need patch_size >= 1, stride >= 1 and guard >= 0, got "
                f"{patch_size}, {stride} and {guard}."
            )
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"{name}: test_fraction must lie in (0, 1), got {test_fraction}.")
        photos: list[UInt8[np.ndarray, "h w 3"]] = load_sample_images().images
        patches, origins = [], []
        for p, photo in enumerate(photos):
            height, width, _ = photo.shape
            boundary = int((1.0 - test_fraction) * width)
            start, stop = (0, boundary) if split == "train" else (boundary + guard, width)
            if stop - start < patch_size or height < patch_size:
                raise ValueError(
                    f"{name}: the {split} region of photo {p} is {height} x "
                    f"{max(stop - start, 0)} pixels, too small for {patch_size} x "
                    f"{patch_size} patches; lower patch_size, guard or change test_fraction."
                )
            chw = photo.transpose(2, 0, 1)
            for row in range(0, height - patch_size + 1, stride):
                for col in range(start, stop - patch_size + 1, stride):
                    patches.append(chw[:, row : row + patch_size, col : col + patch_size])
                    origins.append((p, row, col))
        self.images = np.ascontiguousarray(np.stack(patches))
        self.num_levels = 256
        self.origins = np.asarray(origins, dtype=np.int64)
        heights = np.asarray([photos[p].shape[0] for p in self.origins[:, 0]])
        self.labels = 4 * self.origins[:, 0] + (4 * self.origins[:, 1]) // heights
        self.split = split
        self.patch_size = patch_size
        self.stride = stride
        self.test_fraction = test_fraction
        self.guard = guard
