"""A folder of PNG / JPEG images, read with Pillow."""

import os
import pathlib
from typing import Literal

import numpy as np
from jaxtyping import Int, UInt8
from PIL import Image, UnidentifiedImageError

from ._base import AbstractImageSource, DataError


_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _read_image(path: pathlib.Path, mode: str) -> UInt8[np.ndarray, "c h w"]:
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert(mode), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(
            f"{os.fspath(path)!r} could not be read as an image ({e}); expected an "
            "8-bit PNG or JPEG file."
        ) from e
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


class ImageFolderSource(AbstractImageSource):
    """Every PNG and JPEG file under a folder, as uint8 images with 256 levels.

    Files ending in `.png`, `.jpg` or `.jpeg` (any case) are found in `directory` and,
    with `recursive=True`, in its subfolders; they are read in sorted path order with
    Pillow, converted to RGB (`channels=3`) or greyscale (`channels=1`), and must all
    have the same size (resize them beforehand otherwise). Other files are ignored.

    **Arguments:**

    - `directory`: the folder.
    - `channels`: 3 for RGB or 1 for greyscale.
    - `recursive`: whether to look into subfolders too.

    **Fields:** `images` (uint8, `(N, C, H, W)`), `num_levels` (256) and `files` (the
    paths, in the order of `images`).
    """

    images: UInt8[np.ndarray, "n c h w"]
    num_levels: int
    labels: Int[np.ndarray, " n"] | None
    files: tuple[str, ...]

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        channels: Literal[1, 3] = 3,
        recursive: bool = False,
    ):
        if channels not in (1, 3):
            raise ValueError(f"ImageFolderSource: channels must be 1 or 3, got {channels}.")
        root = pathlib.Path(directory)
        if not root.is_dir():
            raise FileNotFoundError(
                f"{os.fspath(root)!r} is not a folder; expected a folder of PNG/JPEG images."
            )
        candidates = root.rglob("*") if recursive else root.iterdir()
        paths = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in _EXTENSIONS)
        if not paths:
            raise DataError(
                f"{os.fspath(root)!r} holds no image files; expected files ending in "
                f"{', '.join(_EXTENSIONS)} (any case)"
                + ("." if recursive else ", directly inside it (or pass recursive=True).")
            )
        mode = "RGB" if channels == 3 else "L"
        images = [_read_image(paths[0], mode)]
        for path in paths[1:]:
            image = _read_image(path, mode)
            if image.shape != images[0].shape:
                raise DataError(
                    f"{os.fspath(path)!r} is {image.shape[2]} x {image.shape[1]} (width x "
                    f"height); expected {images[0].shape[2]} x {images[0].shape[1]} like "
                    f"{os.fspath(paths[0])!r}: all images of a folder must have one size."
                )
            images.append(image)
        self.images = np.stack(images)
        self.num_levels = 256
        self.labels = None
        self.files = tuple(os.fspath(p) for p in paths)
