"""PNG pictures of a run: a grid of samples, the noise schedule and, for schedules that
depend on the example, the per-dimension SNR curves across examples."""

import math
import os
from collections.abc import Sequence

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


def plot_snr_curves(
    ts: Float[np.ndarray, " times"],
    gammas: Float[np.ndarray, "curves times dims"],
    data_shape: tuple[int, ...],
    path: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    images: Float[np.ndarray, " curves *shape"] | None = None,
    max_pixels: int = 256,
    title: str = "per-dimension log-SNR",
) -> None:
    r"""Plot $\log_{10}\mathrm{SNR}_i(t) = -\gamma_i(t)/\ln 10$ of several per-dimension
    schedules side by side (MuLAN's figure 3) and write it as a PNG.

    One column per schedule (e.g. per test image, through its latent): on top, one thin
    line per data dimension (at most `max_pixels` of them, evenly chosen), coloured by
    the dimension's SNR at $t = 1/2$, with their mean in black. For `(C, H, W)` data a
    second row maps $\log_{10}\mathrm{SNR}$ at $t = 1/2$ over the pixels (mean over
    channels) on a colour scale shared by all columns, where the schedule's dependence
    on the image shows, and with `images` a third row shows the image itself.

    **Arguments:**

    - `ts`: the times, `(T,)`.
    - `gammas`: $\gamma$ at those times, `(curves, T, dims)`.
    - `data_shape`: the shape of one example (`dims` is its size).
    - `path`: the PNG file.
    - `labels`: a title per column (default `schedule 1 .. N`).
    - `images`: the examples the schedules belong to, in $[-1, 1]$, shaped
      `(curves, *data_shape)`.
    - `max_pixels`: the most per-dimension curves drawn per column.
    - `title`: the figure's title.
    """
    ts = np.asarray(ts)
    curves = -np.asarray(gammas) / math.log(10.0)
    n, num_times, dims = curves.shape
    if dims != math.prod(data_shape):
        raise ValueError(
            f"gammas have {dims} dimensions, data_shape {data_shape} has {math.prod(data_shape)}."
        )
    labels = list(labels) if labels is not None else [f"schedule {i + 1}" for i in range(n)]
    if len(labels) != n:
        raise ValueError(f"Got {len(labels)} labels for {n} schedules.")
    is_image = len(data_shape) == 3
    rows = 1 + is_image + (is_image and images is not None)
    pixels = np.unique(np.linspace(0, dims - 1, min(dims, max_pixels)).round().astype(int))
    middle = curves[:, num_times // 2]  # (N, D): log10 SNR at t = 1/2
    low, high = float(middle.min()), float(middle.max())
    spread = max(high - low, 1e-12)
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(
        rows,
        n,
        figsize=(2.4 * n, 2.6 + 2.0 * (rows - 1)),
        dpi=120,
        squeeze=False,
        height_ratios=[1.3] + [1.0] * (rows - 1),
    )
    for i in range(n):
        ax = axes[0, i]
        for d in pixels:
            colour = cmap((middle[i, d] - low) / spread)
            ax.plot(ts, curves[i, :, d], lw=0.4, alpha=0.5, color=colour)
        ax.plot(ts, curves[i].mean(axis=1), color="black", lw=1.2)
        ax.set_title(labels[i], fontsize=9)
        ax.set_xlabel("$t$", fontsize=8)
        ax.tick_params(labelsize=7)
        if i:
            ax.sharey(axes[0, 0])
        else:
            ax.set_ylabel(r"$\log_{10}\,\mathrm{SNR}(t)$", fontsize=8)
        if not is_image:
            continue
        heat = middle[i].reshape(data_shape).mean(axis=0)
        shown = axes[1, i].imshow(heat, cmap=cmap, vmin=low, vmax=high)
        if i == n - 1:
            fig.colorbar(shown, ax=axes[1, i], fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
        if i == 0:
            axes[1, i].set_ylabel(r"$\log_{10}\mathrm{SNR}(t = \frac{1}{2})$", fontsize=8)
        if images is not None:
            picture = (np.clip(np.asarray(images[i]), -1.0, 1.0) + 1.0) / 2.0
            picture = picture.transpose(1, 2, 0)
            axes[2, i].imshow(
                picture[..., 0] if picture.shape[-1] == 1 else picture,
                cmap="gray",
                vmin=0.0,
                vmax=1.0,
            )
    for ax in axes[1:].flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
