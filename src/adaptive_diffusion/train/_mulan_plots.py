"""MuLAN's per-pixel SNR curves across latents (the paper's figure 3), as a PNG."""

import os
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._processes import MuLAN, snr_curves


def mulan_snr_figure(
    mulan: MuLAN,
    zs: Float[Array, "n latent"],
    path: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    num_times: int = 128,
    max_pixels: int = 256,
    title: str = "MuLAN: per-pixel log-SNR",
) -> None:
    r"""Plot $\log_{10}\mathrm{SNR}_i(z, t) = -\gamma_i(z, t)/\ln 10$ for several latents.

    One column per latent $z$: on top, one thin line per data dimension (at most
    `max_pixels` of them, evenly chosen), coloured by the dimension's SNR at $t = 1/2$,
    with their mean in black; below, for `(C, H, W)` data, the map of
    $\log_{10}\mathrm{SNR}$ at $t = 1/2$ over the pixels (mean over channels), on a colour
    scale shared by all latents, where the schedule's dependence on the image shows.
    Pass latents encoded from a few test images (`mulan.encode`) or drawn from the prior.

    **Arguments:**

    - `mulan`: the model.
    - `zs`: `(N, latent)` latents, one column each.
    - `path`: the PNG file.
    - `labels`: a title per latent (e.g. the digit class), default `z_1 .. z_N`.
    - `num_times`: the number of times on $[0, 1]$.
    - `max_pixels`: the most per-dimension curves drawn per latent.
    - `title`: the figure's title.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ts = jnp.linspace(0.0, 1.0, num_times)
    curves = np.asarray(
        eqx.filter_jit(lambda m, zs: jax.vmap(lambda z: snr_curves(m, z, ts))(zs))(mulan, zs)
    )  # (N, T, D)
    n, _, dims = curves.shape
    labels = list(labels) if labels is not None else [f"$z_{{{i + 1}}}$" for i in range(n)]
    if len(labels) != n:
        raise ValueError(f"Got {len(labels)} labels for {n} latents.")
    images = len(mulan.data_shape) == 3
    pixels = np.unique(np.linspace(0, dims - 1, min(dims, max_pixels)).round().astype(int))
    middle = curves[:, num_times // 2]  # (N, D), log10 SNR at t = 1/2
    low, high = float(middle.min()), float(middle.max())
    norm_range = max(high - low, 1e-12)

    figure = Figure(figsize=(2.6 * n, 5.2 if images else 2.8), dpi=120)
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2 if images else 1, n, height_ratios=[1.2, 1] if images else [1])
    cmap = colormaps["viridis"]
    shared = None
    for i in range(n):
        ax = figure.add_subplot(grid[0, i], sharey=shared)
        shared = shared or ax
        for d in pixels:
            ax.plot(
                np.asarray(ts),
                curves[i, :, d],
                lw=0.4,
                alpha=0.5,
                color=cmap((middle[i, d] - low) / norm_range),
            )
        ax.plot(np.asarray(ts), curves[i].mean(axis=1), color="black", lw=1.2)
        ax.set_title(labels[i], fontsize=9)
        ax.set_xlabel("$t$", fontsize=8)
        if i == 0:
            ax.set_ylabel(r"$\log_{10}\,\mathrm{SNR}(t)$", fontsize=8)
        ax.tick_params(labelsize=7)
        if images:
            channels, height, width = mulan.data_shape
            heat = middle[i].reshape(channels, height, width).mean(axis=0)
            ax_map = figure.add_subplot(grid[1, i])
            shown = ax_map.imshow(heat, cmap=cmap, vmin=low, vmax=high)
            ax_map.set_xticks([])
            ax_map.set_yticks([])
            if i == n - 1:
                figure.colorbar(shown, ax=ax_map, fraction=0.046, pad=0.04).ax.tick_params(
                    labelsize=7
                )
            if i == 0:
                ax_map.set_ylabel(r"$\log_{10}\mathrm{SNR}(t = 1/2)$", fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(os.fspath(path))
