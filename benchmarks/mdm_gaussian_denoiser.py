"""The MDM bound of a Gaussian model of the data, with its exact denoiser: a check of the
bound's arithmetic on 256-level data that no network can spoil.

The training split's mean and covariance define $x \\sim \\mathcal N(\\mu, \\Sigma_x)$, and
with $v_0 \\sim q(v_0 \\mid x)$ the joint state is Gaussian, so
$\\mathbb E[\\varepsilon \\mid u_t] = (L_t \\otimes I)^\\top \\operatorname{Cov}(u_t)^{-1}
(u_t - (A_t \\otimes I)\\,\\mathbb E u_0)$ exactly. The bound of the held-out data under
that denoiser (`batch_nelbo`, `--repeats` draws) is compared with the Gaussian model's own
$-\\log$ density times the bin width. A trained network's bound far above the Gaussian's
is the network's failure, not the bound's.

    python benchmarks/mdm_gaussian_denoiser.py --data patches --out /tmp/b/gauss.json
"""

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np

import adaptive_diffusion as ad
from _report import machine, write_report
from adaptive_diffusion.data import levels_to_centres
from adaptive_diffusion.train import config_path, load_config, make_source


PROCESSES = {
    "cld-12": lambda: ad.CLD(gamma_min=-12.0),
    "cld-9.5": lambda: ad.CLD(gamma_min=-9.5),
    "cld-5.5": lambda: ad.CLD(gamma_min=-5.5),
    "alda-9.5": lambda: ad.ALDA(gamma_min=-9.5),
    "malda-9.5": lambda: ad.MALDA(gamma_min=-9.5),
}
DATA = {"digits": [], "patches": ["data.source=patches", "data.patch_size=8"]}


def gaussian_denoiser(process, mean, cov_x):
    """The exact $\\mathbb E[\\varepsilon \\mid u_t]$ of the Gaussian model under `process`."""
    size = mean.size
    k = process.num_aux
    eye = jnp.eye(size)
    cov0 = jax.scipy.linalg.block_diag(cov_x, jnp.kron(jnp.diag(process.aux_init()[1]), eye))
    mean0 = jnp.concatenate([mean, jnp.zeros(k * size)])

    def model(u, t):
        a, sigma = process.transition(t)
        big_a = jnp.kron(a, eye)
        big_l = jnp.kron(jnp.linalg.cholesky(sigma), eye)
        cov = big_a @ cov0 @ big_a.T + big_l @ big_l.T
        return (big_l.T @ jnp.linalg.solve(cov, u.reshape(-1) - big_a @ mean0)).reshape(u.shape)

    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=sorted(DATA), default="patches")
    parser.add_argument(
        "--processes", nargs="+", choices=sorted(PROCESSES), default=list(PROCESSES)
    )
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/mdm_gaussian_denoiser.json")
    args = parser.parse_args()
    config = load_config(config_path("digits"), DATA[args.data])
    train, test = make_source(config.data, "train"), make_source(config.data, "test")
    levels = train.num_levels
    xs = levels_to_centres(train[np.arange(len(train))], levels).astype(np.float64)
    flat = xs.reshape(len(xs), -1)
    size = flat.shape[1]
    mean, cov_x = flat.mean(0), np.cov(flat.T) + 1e-6 * np.eye(size)
    held = levels_to_centres(test[np.arange(min(args.examples, len(test)))], levels)
    centred = held.reshape(len(held), -1).astype(np.float64) - mean
    _, logdet = np.linalg.slogdet(cov_x)
    nll = (
        0.5 * np.einsum("bi,ij,bj->b", centred, np.linalg.inv(cov_x), centred)
        + 0.5 * logdet
        + 0.5 * size * math.log(2 * math.pi)
        - size * math.log(2.0 / levels)
    )
    gaussian = float(nll.mean() / (size * math.log(2.0)))
    print(f"{args.data}: the Gaussian model's -log density x bin width: {gaussian:.3f} bits/dim")
    print(
        "\n| process | bound | diffusion | reconstruction | prior | auxiliary |"
        "\n|---|---|---|---|---|---|"
    )
    rows = []
    xs_held = jnp.asarray(held)
    for name in args.processes:
        process = PROCESSES[name]()
        model = gaussian_denoiser(
            process, jnp.asarray(mean, jnp.float32), jnp.asarray(cov_x, jnp.float32)
        )
        bound = jax.jit(
            lambda xs, key, p=process, m=model: ad.batch_nelbo(p, m, xs, key=key, num_levels=levels)
        )
        draws = [bound(xs_held, jax.random.key(i)) for i in range(args.repeats)]
        row = {"process": name, "gaussian_nll": gaussian}
        for field in ("total", "diffusion", "reconstruction", "prior", "auxiliary"):
            row[field] = float(np.mean([getattr(d, field).mean() for d in draws]))
        rows.append(row)
        print(
            f"| {name} | {row['total']:.3f} | {row['diffusion']:.3f} | {row['reconstruction']:.3f} "
            f"| {row['prior']:.4f} | {row['auxiliary']:.3f} |",
            flush=True,
        )
    write_report(args.out, {"machine": machine(), "data": args.data, "rows": rows})


if __name__ == "__main__":
    main()
