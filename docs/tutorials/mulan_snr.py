"""MuLAN on the digits: per-pixel noise schedules conditioned on a latent.

The VDM tutorial's model with one line changed: the process is `ad.MuLAN`, whose
log-SNR schedule has one curve per pixel and depends on the image through a latent
`z ~ q(z | x)`. Trains it with the VDM tutorial's loop, reports the held-out ELBO with its
latent (auxiliary) term, and draws the per-pixel schedules of a few test digits. Run from
the repository root:

    python docs/tutorials/mulan_snr.py [--out DIR] [--quick]
"""

import argparse
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import vdm_digits as vdm  # the VDM tutorial's data, network, training loop and evaluation
from matplotlib import colormaps
from matplotlib.figure import Figure

import adaptive_diffusion as ad


# --8<-- [start:model]
def build_mulan(key: jax.Array, num_levels: int) -> tuple[ad.MuLAN, ad.nn.MLPDenoiser]:
    """MuLAN as the project's `digits_mulan` config builds it: a polynomial per-pixel
    schedule with learned endpoints, a categorical latent of 8 categories, an MLP encoder."""
    key_process, key_encoder, key_net = jax.random.split(key, 3)
    latent = ad.CategoricalLatent(size=8)
    encoder = ad.nn.MLPEncoder((1, 8, 8), latent.num_params, key=key_encoder)
    process = ad.MuLAN(
        (1, 8, 8), key=key_process, latent=latent, encoder=encoder, learn_endpoints=True
    )
    return process, vdm.make_denoiser(process, key_net, num_levels)
# --8<-- [end:model]


# --8<-- [start:schedules]
def pixel_gammas(process: ad.MuLAN, xs, ts, key):
    """gamma_i(z, t) of every pixel at times `ts`, for one latent z ~ q(z | x) per image:
    shape `(images, times, 1, 8, 8)`; and the latents, `(images, 8)`."""

    def one(x, k):
        z = process.encode(k, x)  # z ~ q(z | x)
        diagonal_vp = process.condition(z)  # the forward process given z: a DiagonalVP
        return jax.vmap(diagonal_vp.schedule)(ts), z

    return jax.jit(jax.vmap(one))(xs, jax.random.split(key, len(xs)))


def spreads(gammas, t_index):
    """At one time: the standard deviation of gamma across pixels (mean over images) and
    across images (mean over pixels)."""
    at_t = np.asarray(gammas[:, t_index]).reshape(len(gammas), -1)
    return at_t.std(axis=1).mean(), at_t.std(axis=0).mean()
# --8<-- [end:schedules]


# --8<-- [start:pictures]
def plot_snr_curves(ts, gammas, images, path):
    """Per test digit (columns): every pixel's log10 SNR(t) = -gamma/ln 10, coloured by
    its value at t = 1/2, with their mean in black; below, the digit."""
    log_snr = -np.asarray(gammas).reshape(len(gammas), len(ts), -1) / math.log(10.0)
    middle = log_snr[:, len(ts) // 2]
    low, high = middle.min(), middle.max()
    cmap = colormaps["viridis"]
    fig = Figure(figsize=(2.1 * len(gammas), 4.2), dpi=100)
    axes = fig.subplots(2, len(gammas), squeeze=False, height_ratios=[1.6, 1.0])
    for i in range(len(gammas)):
        ax = axes[0, i]
        for d in range(log_snr.shape[-1]):
            shade = (middle[i, d] - low) / max(high - low, 1e-9)
            ax.plot(ts, log_snr[i, :, d], lw=0.5, color=cmap(float(shade)))
        ax.plot(ts, log_snr[i].mean(axis=1), color="black", lw=1.2)
        ax.set_xlabel("$t$", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(f"test digit {i + 1}", fontsize=9)
        if i == 0:
            ax.set_ylabel(r"$\log_{10} \mathrm{SNR}_i(t)$", fontsize=8)
        else:
            ax.sharey(axes[0, 0])
        axes[1, i].imshow(np.asarray(images[i, 0]), cmap="gray", vmin=-1.0, vmax=1.0)
        axes[1, i].set_xticks([])
        axes[1, i].set_yticks([])
    fig.suptitle("MuLAN's per-pixel log-SNR on the digits (one line per pixel)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def plot_gamma_maps(ts, gammas, images, t_indices, path):
    """The mean test digit, then the per-pixel gamma_i(t) of the first test digit at a
    few times, each on its own colour scale."""
    fig = Figure(figsize=(2.3 * (1 + len(t_indices)), 2.4), dpi=100, layout="constrained")
    axes = fig.subplots(1, 1 + len(t_indices))
    shown = axes[0].imshow(np.asarray(images).mean(axis=0)[0], cmap="gray", vmin=-1, vmax=1)
    axes[0].set_title("mean test digit", fontsize=9)
    fig.colorbar(shown, ax=axes[0], shrink=0.8).ax.tick_params(labelsize=7)
    for ax, k in zip(axes[1:], t_indices):
        shown = ax.imshow(np.asarray(gammas[0, k, 0]), cmap="viridis")
        ax.set_title(f"$\\gamma_i(t = {float(ts[k]):.1f})$", fontsize=9)
        fig.colorbar(shown, ax=ax, shrink=0.8).ax.tick_params(labelsize=7)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(path)
# --8<-- [end:pictures]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    here = pathlib.Path(__file__).resolve().parent
    parser.add_argument("--out", type=pathlib.Path, default=here / "mulan_snr")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    steps, repeats = (200, 1) if args.quick else (3000, 8)
    start = time.perf_counter()

    x_train, x_test, num_levels = vdm.load_digits()
    key_model, key_train, key_elbo, key_z = jax.random.split(jax.random.key(0), 4)
    params = build_mulan(key_model, num_levels)
    print(f"training MuLAN for {steps} steps on {len(x_train)} digits")
    params = vdm.train(params, x_train, loss=vdm.make_loss(num_levels), steps=steps, key=key_train)

    elbo = vdm.heldout_elbo(params, x_test, key_elbo, num_levels=num_levels, repeats=repeats)
    print(f"\nheld-out bits/dim ({len(x_test)} test digits; a uniform model scores "
          f"log2({num_levels}) = {math.log2(num_levels):.3f})")
    print(f"  ELBO ({repeats} draws per digit)  {vdm.mean_and_ci(elbo.total)}")
    for name in ("diffusion", "prior", "reconstruction", "auxiliary"):
        print(f"    {name:<15} {float(jnp.mean(getattr(elbo, name))):.3f}")

    process = params[0]
    ts = jnp.linspace(0.0, 1.0, 101)
    gammas, zs = pixel_gammas(process, x_test, ts, key_z)
    categories = np.bincount(np.asarray(jnp.argmax(zs, axis=1)), minlength=zs.shape[1])
    print(f"  latent categories drawn for the {len(x_test)} test digits: {categories.tolist()}")
    half = len(ts) // 2
    across_pixels, across_images = spreads(gammas, half)
    print(f"  std of gamma at t = 0.5: across pixels {across_pixels:.3f}, "
          f"across test digits {across_images:.3f}")
    gamma_0, gamma_1 = (float(g) for g in process.schedule.endpoints())
    print(f"  learned endpoints: gamma(0) = {gamma_0:.2f}, gamma(1) = {gamma_1:.2f}")

    shown = np.arange(4)
    plot_snr_curves(np.asarray(ts), gammas[shown], np.asarray(x_test[shown]),
                    args.out / "snr_curves.png")
    plot_gamma_maps(np.asarray(ts), gammas, np.asarray(x_test), [10, 50, 90],
                    args.out / "gamma_maps.png")
    print(f"\npictures in {args.out}; wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
