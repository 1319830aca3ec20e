"""PNG pictures of a run: a grid of samples and the noise schedule."""

import math
import os

import matplotlib


matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from jaxtyping import Float, Integer  # noqa: E402
from PIL import Image  # noqa: E402


def save_image_grid(
    levels: Integer[np.ndarray, "n c h w"],
    num_levels: int,
    path: str | os.PathLike,
    *,
    columns: int | None = None,
    scale: int | None = None,
) -> None:
    """Write images of integer levels as one PNG grid, one-pixel gaps between them.

    **Arguments:**

    - `levels`: `(N, C, H, W)` integer levels `0 .. num_levels - 1`; `C` is 1 (grey) or
      3 (RGB).
    - `num_levels`: the number of levels, mapped linearly onto 0..255.
    - `path`: the PNG file.
    - `columns`: images per row (default: about the square root of `N`).
    - `scale`: each pixel drawn as a `scale x scale` block (default: images about 64
      pixels wide).
    """
    levels = np.asarray(levels)
    n, channels, height, width = levels.shape
    if channels not in (1, 3):
        raise ValueError(f"save_image_grid needs 1 or 3 channels, got shape {levels.shape}.")
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    scale = scale or max(1, 64 // width)
    pixels = np.round(levels.astype(np.float64) * 255.0 / (num_levels - 1)).astype(np.uint8)
    pixels = pixels.repeat(scale, axis=2).repeat(scale, axis=3)
    h, w = height * scale, width * scale
    grid = np.full((channels, rows * (h + 1) + 1, columns * (w + 1) + 1), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = (
            pixels[i]
        )
    image = grid[0] if channels == 1 else grid.transpose(1, 2, 0)
    Image.fromarray(image).save(path)


def plot_schedule(
    ts: Float[np.ndarray, " times"],
    gammas: Float[np.ndarray, "curves times dims"],
    path: str | os.PathLike,
    *,
    title: str = "noise schedule",
) -> None:
    r"""Plot $\gamma(t)$ (the negative log-SNR) and write it as a PNG.

    A schedule shared by all dimensions is one line. Per-dimension schedules are drawn
    as their median over dimensions with the 5-95% band around it, so the spread across
    pixels is visible; several curves (e.g. one per latent) get one colour each.

    **Arguments:**

    - `ts`: the times, `(T,)`.
    - `gammas`: $\gamma$ at those times, `(curves, T, dims)`.
    - `path`: the PNG file.
    - `title`: the figure's title.
    """
    ts, gammas = np.asarray(ts), np.asarray(gammas)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for i, curve in enumerate(gammas):
        colour = f"C{i % 10}"
        label = f"schedule {i}" if len(gammas) > 1 else None
        if np.allclose(curve, curve[:, :1]):
            ax.plot(ts, curve[:, 0], color=colour, label=label)
        else:
            low, mid, high = np.percentile(curve, [5, 50, 95], axis=1)
            ax.fill_between(ts, low, high, color=colour, alpha=0.25, linewidth=0)
            ax.plot(ts, mid, color=colour, label=(label or "median") + " (5-95% of dims)")
    ax.set_xlabel("t")
    ax.set_ylabel(r"$\gamma(t) = -\log \mathrm{SNR}$")
    ax.set_title(title)
    if len(gammas) > 1 or not np.allclose(gammas[0], gammas[0][:, :1]):
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
