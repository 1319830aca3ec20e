"""The probability-flow likelihood with VDM's CIFAR-10 UNet: score_sde's method against
adaptive-diffusion's, on random CIFAR-shaped data; written to run on a GPU machine as it
is.

The comparison of `likelihood_speed.py` (the same functions) at CIFAR-10 size: the UNet
of the shipped `cifar10` config (32 blocks of 128 channels, VDM's published network) at
its initial weights, `--num-examples` random 3x32x32 images on the 256 bin centres
dequantised once by q(z_0 | x), one Rademacher probe each. score_sde's method runs scipy's
RK45 on the host over the flattened batch, one host round trip per evaluation; ours is
one jitted, vmapped diffrax solve per example. Each method's error is against ours at
`--reference-tol` with the same probes (float32: a float64 UNet is too slow to serve as
the reference here; `likelihood_speed.py` has the float64 check on digits).

Prints a table and writes JSON:

    python benchmarks/likelihood_speed_unet.py [--num-examples 16] [--tols 1e-3 1e-5]
    python benchmarks/likelihood_speed_unet.py --quick   # a 2-block UNet of 16 channels
"""

import argparse
import json
import pathlib

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import adaptive_diffusion as ad
from _report import machine
from adaptive_diffusion import train
from adaptive_diffusion.data import levels_to_centres
from likelihood_speed import ours, score_sde_baseline, timed


SHAPE = (3, 32, 32)
NUM_LEVELS = 256


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-examples", type=int, default=16)
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-3, 1e-5])
    parser.add_argument("--reference-tol", type=float, default=1e-7)
    parser.add_argument("--quick", action="store_true", help="a small UNet: a CPU check")
    parser.add_argument("--out", default="benchmarks/results/likelihood_speed_unet.json")
    args = parser.parse_args()

    overrides = ["network.dropout=0"]
    if args.quick:
        overrides += ["network.channels=16", "network.n_layers=2"]
    config = train.Config.from_yaml(train.config_path("cifar10")).with_overrides(overrides)
    model = train.build_model(config, SHAPE, NUM_LEVELS, key=jax.random.key(0))
    process = model.process
    score = ad.score_fn(process, model.model(), model.parameterization)
    n = args.num_examples
    levels = jax.random.randint(jax.random.key(1), (n, *SHAPE), 0, NUM_LEVELS)
    xs = jnp.asarray(levels_to_centres(np.asarray(levels), NUM_LEVELS))
    keys_q = jax.random.split(jax.random.key(2), n)
    dequantize = ad.ProcessDequantization()
    ys, _ = jax.vmap(lambda k, x: dequantize(process, k, x, NUM_LEVELS))(keys_q, xs)
    keys = jax.random.split(jax.random.key(3), n)
    probes = jax.vmap(lambda k, y: ad.HutchinsonTrace().init(k, y)[0])(keys, ys)

    baseline = score_sde_baseline(process, score, ys, probes)
    methods = {"score_sde (scipy RK45, VJP)": lambda tol: lambda: baseline(tol)}
    for label, mode in (("JVP", ad.ForwardMode()), ("VJP", ad.ReverseMode())):
        estimator = ad.HutchinsonTrace(products=mode)
        methods[f"diffrax Tsit5 vmap, {label}"] = ours(
            process, score, ys, keys, diffrax.Tsit5(), estimator
        )
    reference, _ = jax.block_until_ready(methods["diffrax Tsit5 vmap, JVP"](args.reference_tol)())
    reference = np.asarray(reference, np.float64)

    rows = []
    print(f"{'method':30s} {'tol':>7s} {'ms/ex':>9s} {'nfe/ex':>7s} {'err (nats)':>10s} {'x':>6s}")
    for tol in args.tols:
        base = None
        for name, make in methods.items():
            seconds, (log_prob, nfe) = timed(make(tol), repeats=2)
            base = seconds if base is None else base
            error = float(np.mean(np.abs(np.asarray(log_prob, np.float64) - reference)))
            row = {
                "method": name,
                "tol": tol,
                "seconds_per_example": seconds / n,
                "nfe_per_example": float(np.mean(nfe)),
                "err_nats": error,
                "speedup_vs_score_sde": base / seconds,
            }
            rows.append(row)
            print(
                f"{name:30s} {tol:7.0e} {1e3 * seconds / n:9.2f} {row['nfe_per_example']:7.1f} "
                f"{error:10.2e} {row['speedup_vs_score_sde']:6.2f}"
            )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": machine(),
        "network": {"channels": config.network.channels, "n_layers": config.network.n_layers},
        "num_examples": n,
        "reference_tol": args.reference_tol,
        "rows": rows,
    }
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
