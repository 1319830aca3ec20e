"""Input data: image sources (uint8 levels, channels first) and the grain pipeline."""

from ._array import ArraySource as ArraySource
from ._base import AbstractImageSource as AbstractImageSource, DataError as DataError
from ._cifar import CIFAR10Source as CIFAR10Source
from ._digits import DigitsSource as DigitsSource
from ._folder import ImageFolderSource as ImageFolderSource
from ._imagenet import ImageNet32Source as ImageNet32Source
from ._patches import SampleImagePatchesSource as SampleImagePatchesSource
from ._pipeline import (
    batch_pipeline as batch_pipeline,
    image_pipeline as image_pipeline,
    levels_to_centres as levels_to_centres,
)


__all__ = [
    "ArraySource",
    "AbstractImageSource",
    "DataError",
    "CIFAR10Source",
    "DigitsSource",
    "ImageFolderSource",
    "ImageNet32Source",
    "SampleImagePatchesSource",
    "batch_pipeline",
    "image_pipeline",
    "levels_to_centres",
]
