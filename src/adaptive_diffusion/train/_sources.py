"""The image source a data config names, for the training or the held-out split."""

from typing import Literal

from ..data import (
    AbstractImageSource,
    ArraySource,
    CIFAR10Source,
    DigitsSource,
    ImageFolderSource,
    ImageNet32Source,
    SampleImagePatchesSource,
)
from ._config import ConfigError, DataConfig


def make_source(config: DataConfig, split: Literal["train", "test"]) -> AbstractImageSource:
    """The images of `config.source` for `split`.

    ImageNet32's held-out split is its validation set; `"folder"` and `"npz"` read
    `config.path` for training and `config.test_path` for testing.

    **Arguments:**

    - `config`: the data section of a run's config.
    - `split`: `"train"` or `"test"`.

    **Raises:** `ConfigError` when a path the source needs is not set.
    """
    if config.source == "digits":
        return DigitsSource(split)
    if config.source == "patches":
        return SampleImagePatchesSource(split, patch_size=config.patch_size)
    path = (
        config.path
        if split == "train" or config.source in ("cifar10", "imagenet32")
        else (config.test_path)
    )
    if path is None:
        key = "data.path" if split == "train" else "data.test_path"
        raise ConfigError(
            f"data.source={config.source!r} needs {key} for its {split} split; set it in the "
            f"config or with --set {key}=...."
        )
    if config.source == "cifar10":
        return CIFAR10Source(path, split)
    if config.source == "imagenet32":
        return ImageNet32Source(path, "train" if split == "train" else "validation")
    if config.source == "folder":
        return ImageFolderSource(path)
    return ArraySource.from_file(path, config.num_levels)
