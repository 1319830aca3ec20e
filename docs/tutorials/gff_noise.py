"""Correlated noise: the Gaussian free field (GFF) of non-isotropic diffusion (NI-DDPM).

Draws white and GFF noise at a few powers, checks their radially averaged power spectra,
noises digits under `ad.VP` and `ad.NonIsotropicVP` with the same schedule and the same
white noise, and trains both on the digits at equal network and steps with the VDM
tutorial's loop to compare their held-out ELBOs. Run from the repository root:

    python docs/tutorials/gff_noise.py [--out DIR] [--quick]
"""

import argparse
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import vdm_digits as vdm  # the VDM tutorial's data, network, training loop and evaluation
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

import adaptive_diffusion as ad


# --8<-- [start:noise]
def draw_noise(shape, power, key, num):
    """`num` draws of N(0, Sigma) for the GFF of `power`: Sigma^(1/2) applied to white
    noise, by FFT."""
    covariance = ad.GFFCovariance(shape, power=power)
    white = jax.random.normal(key, (num, *shape))
    return jax.vmap(covariance.sqrt_apply)(white)


def radial_power_spectrum(noise):
    """The power |FFT|^2 of `(num, 1, H, W)` noise, averaged over draws and over rings of
    equal |k| (cycles per pixel); returns the ring radii and their mean power."""
    _, _, h, w = noise.shape
    power = np.mean(np.abs(np.fft.fft2(np.asarray(noise)[:, 0])) ** 2, axis=0) / (h * w)
    ky, kx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    radius = np.sqrt(ky**2 + kx**2)
    rings = np.round(radius * max(h, w)).astype(int)  # rings one frequency step wide
    keep = rings > 0  # the DC term has |k| = 0: no place on a log axis
    totals = np.bincount(rings[keep], weights=power[keep])
    counts = np.bincount(rings[keep])
    used = counts > 0
    return np.arange(len(counts))[used] / max(h, w), totals[used] / counts[used]
# --8<-- [end:noise]


# --8<-- [start:processes]
def build_processes(key, num_levels, power=1.0):
    """VDM and its non-isotropic twin: the same learned schedule family, initial weights
    and network, the white noise replaced by the GFF's."""
    key_schedule, key_net = jax.random.split(key)
    schedule = ad.LearnedSchedule(key=key_schedule, gamma_min=-13.3, gamma_max=5.0)
    vp = ad.VP(schedule)
    ni = ad.NonIsotropicVP(schedule, ad.GFFCovariance((1, 8, 8), power=power))
    return (vp, vdm.make_denoiser(vp, key_net, num_levels)), (
        ni,
        vdm.make_denoiser(ni, key_net, num_levels),
    )


def noised(process, x, ts, eps):
    """x_t = alpha_t x + sigma_t Sigma^(1/2) eps at each time, from one white `eps`."""
    return jnp.stack([process.perturb(x, t, eps) for t in ts])
# --8<-- [end:processes]


# --8<-- [start:pictures]
def plot_noise_samples(samples, powers, path):
    """Rows: the powers; columns: independent draws; every panel on its own grey scale."""
    fig = Figure(figsize=(1.45 * samples.shape[1], 1.4 * samples.shape[0]), dpi=100)
    axes = fig.subplots(*samples.shape[:2], squeeze=False)
    for i, power in enumerate(powers):
        for j in range(samples.shape[1]):
            axes[i, j].imshow(np.asarray(samples[i, j, 0]), cmap="gray", interpolation="nearest")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[i, 0].set_ylabel("white" if power == 0 else f"GFF, $p = {power:g}$", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def plot_spectra(spectra, powers, path):
    """Radially averaged power against |k| on log-log axes, with the slope -2p for each."""
    fig = Figure(figsize=(5.0, 3.6), dpi=100)
    ax = fig.add_subplot()
    for i, (power, (k, s)) in enumerate(zip(powers, spectra)):
        ax.loglog(k, s, "o", ms=3, color=f"C{i}", label=f"$p = {power:g}$")
        ax.loglog(k, s[0] * (k / k[0]) ** (-2 * power), "-", lw=0.8, color=f"C{i}")
    ax.set_xlim(0.01, 1.0)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("$|k|$ (cycles per pixel)")
    ax.set_ylabel("mean power per mode")
    ax.set_title(r"radially averaged power; lines: $|k|^{-2p}$")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def plot_noised_digits(rows, labels, ts, path):
    """One row per process: the same digit and the same white noise at times `ts`."""
    fig = Figure(figsize=(1.3 * len(ts), 1.45 * len(rows)), dpi=100)
    axes = fig.subplots(len(rows), len(ts), squeeze=False)
    for i, (row, label) in enumerate(zip(rows, labels)):
        for j, t in enumerate(ts):
            axes[i, j].imshow(np.asarray(row[j, 0]), cmap="gray", interpolation="nearest")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(f"$t = {t:g}$", fontsize=9)
        axes[i, 0].set_ylabel(label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
# --8<-- [end:pictures]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    here = pathlib.Path(__file__).resolve().parent
    parser.add_argument("--out", type=pathlib.Path, default=here / "gff_noise")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    steps, repeats, num_spectrum = (100, 1, 16) if args.quick else (1500, 8, 512)
    start = time.perf_counter()
    keys = jax.random.split(jax.random.key(0), 7)

    # White and GFF noise on a 64 x 64 grid, where the correlations are easy to see.
    powers = (0.0, 0.5, 1.0, 2.0)  # p = 0 is white noise
    samples = jnp.stack([draw_noise((1, 64, 64), p, keys[0], 4) for p in powers])
    plot_noise_samples(samples, powers, args.out / "noise_samples.png")
    spectra = [radial_power_spectrum(draw_noise((1, 64, 64), p, keys[1], num_spectrum))
               for p in powers]
    plot_spectra(spectra, powers, args.out / "power_spectrum.png")
    print("fitted log-log slope of the radial power spectrum (expected -2p):")
    for power, (k, s) in zip(powers, spectra):
        slope = np.polyfit(np.log(k), np.log(s), 1)[0]
        print(f"  p = {power:<3g}  {slope:6.2f}   (expected {0.0 - 2.0 * power:g})")

    x_train, x_test, num_levels = vdm.load_digits()
    (vp, vp_net), (ni, ni_net) = build_processes(keys[2], num_levels)
    ts = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 1.0)
    eps = jax.random.normal(keys[3], (1, 8, 8))
    rows = [noised(vp, x_test[0], ts, eps), noised(ni, x_test[0], ts, eps)]
    plot_noised_digits(rows, ["VP", "NonIsotropicVP"], ts, args.out / "noised_digits.png")
    covariance = ni.covariance
    price = -0.5 * float(covariance.logdet()) / (64 * math.log(2.0))
    print(f"\nGFF (p = 1) on 8 x 8: -log det(Sigma) / (2 D ln 2) = {price:.3f} bits/dim")

    results = {}
    for name, params in (("VP", (vp, vp_net)), ("NonIsotropicVP", (ni, ni_net))):
        print(f"\ntraining {name} for {steps} steps")
        # The same batches, times and noises for both: only the process differs.
        loss = vdm.make_loss(num_levels)
        params = vdm.train(params, x_train, loss=loss, steps=steps, key=keys[4])
        results[name] = vdm.heldout_elbo(
            params, x_test, keys[5], num_levels=num_levels, repeats=repeats
        )
    print(f"\nheld-out ELBO, bits/dim ({len(x_test)} test digits, {repeats} draws each; "
          f"uniform model {math.log2(num_levels):.3f})")
    for name, terms in results.items():
        print(f"  {name:<15} {vdm.mean_and_ci(terms.total)}   reconstruction "
              f"{float(jnp.mean(terms.reconstruction)):.3f}")
    difference = results["NonIsotropicVP"].total - results["VP"].total
    print(f"  NonIsotropicVP - VP, paired over the test digits: {vdm.mean_and_ci(difference)}")
    print(f"\npictures in {args.out}; wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
