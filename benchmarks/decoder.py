"""VDM's discretised Gaussian decoder: the library's windowed normaliser against the sum
over every level.

For each number of levels and batch shape, the forward and backward pass (value and
gradients with respect to the mean and the scale) of `ad`'s `discretized_gaussian_nll`
against two direct sums written here: VDM's own form (a log-softmax over every level and a
gather of the data's level, as in the reference code) and the same sum without the gather.
The three are jitted once, then timed interleaved (median of `--rounds` rounds), and
the library's value and gradients compared with VDM's form (largest difference over
the largest magnitude). The means are the data plus noise of the scale
(`z_0 / alpha_0` of VDM's decoder), the scale that of `--gamma-0`.

Prints a table and writes JSON:

    python benchmarks/decoder.py [--rounds 30] [--gamma-0 -6] [--out PATH]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from _report import machine, write_report
from adaptive_diffusion._discrete import (
    bin_centres,
    discretized_gaussian_nll,
    from_levels,
    to_levels,
)


CASES = [  # (levels, batch, dims): digits, photo patches, a CIFAR-10 batch of 8
    (17, 128, 64),
    (64, 128, 192),
    (256, 128, 192),
    (256, 8, 3072),
]


def vdm_form(x, mean, scale, num_levels):
    """The reference's decoder: log-softmax over every level, then the data's level."""
    centres = bin_centres(num_levels)
    logits = -0.5 * jnp.square((mean[..., None] - centres) / scale[..., None])
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    k = to_levels(x, num_levels)
    return -jnp.sum(jnp.take_along_axis(log_probs, k[..., None], axis=-1))


def direct_sum(x, mean, scale, num_levels):
    """The same categorical, its data term in closed form and a logsumexp over levels."""
    centres = bin_centres(num_levels)
    logits = -0.5 * jnp.square((mean[..., None] - centres) / scale[..., None])
    return jnp.sum(0.5 * jnp.square((mean - x) / scale) + jax.nn.logsumexp(logits, axis=-1))


def library(x, mean, scale, num_levels):
    return discretized_gaussian_nll(x, mean, scale, num_levels)


def step(fn, num_levels):
    def loss(x, mean, scale):
        per_example = jax.vmap(lambda a, b, c: fn(a, b, c, num_levels))
        return jnp.mean(per_example(x, mean, jnp.broadcast_to(scale, mean.shape)))

    return jax.jit(jax.value_and_grad(loss, argnums=(1, 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--gamma-0", type=float, default=-6.0)
    parser.add_argument("--out", default="benchmarks/results/decoder.json")
    args = parser.parse_args()
    alpha_sq = 1.0 / (1.0 + np.exp(args.gamma_0))
    scale = float(np.sqrt((1.0 - alpha_sq) / alpha_sq))  # sigma_0 / alpha_0
    methods = {"library": library, "vdm_form": vdm_form, "direct_sum": direct_sum}
    rows = []
    for num_levels, batch, dims in CASES:
        key_x, key_e = jax.random.split(jax.random.key(num_levels))
        x = from_levels(jax.random.randint(key_x, (batch, dims), 0, num_levels), num_levels)
        mean = x + scale * jax.random.normal(key_e, x.shape)
        s = jnp.full((batch, 1), scale)
        fns = {name: step(fn, num_levels) for name, fn in methods.items()}
        outs = {name: jax.block_until_ready(fn(x, mean, s)) for name, fn in fns.items()}
        times = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                start = time.perf_counter()
                jax.block_until_ready(fn(x, mean, s))
                times[name].append(time.perf_counter() - start)
        ref_value, (ref_dmean, ref_dscale) = outs["vdm_form"]
        value, (dmean, dscale) = outs["library"]
        row = {
            "levels": num_levels,
            "batch": batch,
            "dims": dims,
            **{f"{name}_ms": 1e3 * float(np.median(t)) for name, t in times.items()},
            "value_rel_diff": float(abs(value - ref_value) / max(abs(ref_value), 1e-30)),
            "dmean_rel_diff": float(
                jnp.max(jnp.abs(dmean - ref_dmean)) / max(jnp.max(jnp.abs(ref_dmean)), 1e-30)
            ),
            "dscale_rel_diff": float(
                jnp.max(jnp.abs(dscale - ref_dscale)) / max(jnp.max(jnp.abs(ref_dscale)), 1e-30)
            ),
        }
        row["speedup_vs_vdm_form"] = row["vdm_form_ms"] / row["library_ms"]
        rows.append(row)
    print(f"scale sigma_0/alpha_0 = {scale:.4g} (gamma_0 = {args.gamma_0})")
    print(
        "| levels | batch x dims | library | VDM's form | direct sum | speed-up |"
        " value | d mean | d scale |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['levels']} | {r['batch']} x {r['dims']} | {r['library_ms']:.2f} ms"
            f" | {r['vdm_form_ms']:.2f} ms | {r['direct_sum_ms']:.2f} ms"
            f" | {r['speedup_vs_vdm_form']:.1f}x | {r['value_rel_diff']:.1e}"
            f" | {r['dmean_rel_diff']:.1e} | {r['dscale_rel_diff']:.1e} |"
        )
    write_report(
        args.out,
        {"machine": machine(), "gamma_0": args.gamma_0, "scale": scale, "rows": rows},
    )


if __name__ == "__main__":
    main()
