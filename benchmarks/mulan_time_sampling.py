"""Variance of MuLAN's per-batch loss under uniform, antithetic and arc-length times.

A small MuLAN (top-k latent, polynomial schedule network, MLP encoder and denoiser) on
the 8 x 8 digits (17 levels) is evaluated at initialisation and after a short training
run (Adam, antithetic times). With its parameters fixed, the batch-mean NELBO
(`ad.batch_nelbo` on `ad.MuLAN`, bits/dim) is drawn over many batches with each time sampler:

- `uniform`: independent t ~ U(0, 1);
- `antithetic`: VDM's low-discrepancy times (the default);
- `arc_length`: t = L^{-1}(u L(1)) for the example's own schedule, L the arc length of
  gamma(z, .), with the importance weight L(1) / |gamma'(t)| (u antithetic);
- `arc_length_iid`: the same warp of independent u.

All four are unbiased estimates of the same bound (the means agree within their
standard errors); the table gives the variance of the batch mean over `--batches`
batches, for random batches of the train split (data, latent, time and noise all vary)
and for one fixed batch (only latent, time and noise vary).

    python benchmarks/mulan_time_sampling.py [--train-steps 1500] [--batches 400] [--out PATH]
"""

import argparse
import json
import math
import pathlib
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import adaptive_diffusion as ad
from adaptive_diffusion.data import DigitsSource, levels_to_centres


NUM_LEVELS = 17
BATCH = 64
SAMPLERS = {
    "uniform": ad.UniformTimes(),
    "antithetic": ad.AntitheticTimes(),
    "arc_length": ad.ArcLengthTimes(ad.AntitheticTimes()),
    "arc_length_iid": ad.ArcLengthTimes(ad.UniformTimes()),
}


def build(key):
    shape = (1, 8, 8)
    latent = ad.TopKLatent()
    k_enc, k_mulan, k_net = jax.random.split(key, 3)
    encoder = ad.nn.MLPEncoder(shape, latent.num_params, key=k_enc, width=128)
    mulan = ad.MuLAN(shape, key=k_mulan, latent=latent, encoder=encoder)
    input_shape, cond_dim = mulan.network_shape(shape)
    net = ad.nn.MLPDenoiser(input_shape, key=k_net, width=128, depth=2, cond_dim=cond_dim)
    return mulan, net


def batch_loss(model, xs, key, times):
    mulan, net = model
    model = mulan.denoiser(net)
    bound = ad.batch_nelbo(mulan, model, xs, key=key, num_levels=NUM_LEVELS, times=times)
    return jnp.mean(bound.total), jnp.mean(bound.diffusion)


def train(model, data, steps, key):
    optimizer = optax.adam(1e-3)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, key):
        k_batch, k_loss = jax.random.split(key)
        xs = data[jax.random.randint(k_batch, (BATCH,), 0, data.shape[0])]

        def loss(params):
            model = eqx.combine(params, static)
            return batch_loss(model, xs, k_loss, ad.AntitheticTimes())[0]

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, value

    losses = []
    for k in jax.random.split(key, steps):
        params, opt_state, value = step(params, opt_state, k)
        losses.append(float(value))
    return eqx.combine(params, static), losses


def measure(model, data, fixed, num_batches, key):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    results = {}
    for name, times in SAMPLERS.items():

        @jax.jit
        def draws(params, key):
            model = eqx.combine(params, static)

            def one(key):
                k_batch, k_loss = jax.random.split(key)
                xs = data[jax.random.randint(k_batch, (BATCH,), 0, data.shape[0])]
                random = batch_loss(model, xs, k_loss, times)
                return random, batch_loss(model, fixed, k_loss, times)

            return jax.lax.map(one, jax.random.split(key, num_batches))

        start = time.perf_counter()
        (total, diffusion), (fixed_total, fixed_diffusion) = draws(params, key)
        total.block_until_ready()
        seconds = time.perf_counter() - start
        results[name] = {
            "mean_total": float(jnp.mean(total)),
            "stderr_mean_total": float(jnp.std(total) / math.sqrt(num_batches)),
            "var_total": float(jnp.var(total)),
            "var_diffusion": float(jnp.var(diffusion)),
            "fixed_batch_mean_total": float(jnp.mean(fixed_total)),
            "fixed_batch_var_total": float(jnp.var(fixed_total)),
            "fixed_batch_var_diffusion": float(jnp.var(fixed_diffusion)),
            "seconds_incl_compile": seconds,
        }
    return results


def table(title, results):
    lines = [
        title,
        f"{'sampler':<16}{'mean bpd':>16}{'var (random)':>14}{'var diff.':>12}"
        f"{'var (fixed)':>13}{'ratio':>8}",
    ]
    reference = results["antithetic"]["var_total"]
    for name, r in results.items():
        mean = f"{r['mean_total']:.4f}+-{r['stderr_mean_total']:.4f}"
        lines.append(
            f"{name:<16}{mean:>16}{r['var_total']:>14.3e}{r['var_diffusion']:>12.3e}"
            f"{r['fixed_batch_var_total']:>13.3e}{r['var_total'] / reference:>8.3f}"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    default_out = pathlib.Path(__file__).parent / "results" / "mulan_time_sampling.json"
    parser.add_argument("--out", type=pathlib.Path, default=default_out)
    args = parser.parse_args()

    source = DigitsSource("train")
    data = jnp.asarray(levels_to_centres(source.images, NUM_LEVELS))
    key_model, key_train, key_fixed, key_init, key_trained = jax.random.split(
        jax.random.key(args.seed), 5
    )
    fixed = data[jax.random.choice(key_fixed, data.shape[0], (BATCH,), replace=False)]
    model = build(key_model)
    report = {
        "device": jax.devices()[0].device_kind,
        "platform": platform.platform(),
        "batch_size": BATCH,
        "batches": args.batches,
        "train_steps": args.train_steps,
        "model": "MuLAN(1x8x8, TopKLatent(50, 15), PolynomialScheduleNetwork), "
        "MLPEncoder(width 128), MLPDenoiser(width 128, depth 2); Adam 1e-3, batch 64",
    }
    report["init"] = measure(model, data, fixed, args.batches, key_init)
    print(table("At initialisation (bits/dim; ratio = var / var(antithetic))", report["init"]))
    start = time.perf_counter()
    model, losses = train(model, data, args.train_steps, key_train)
    report["train_seconds"] = time.perf_counter() - start
    report["train_loss_last_100"] = float(np.mean(losses[-100:]))
    report["trained"] = measure(model, data, fixed, args.batches, key_trained)
    print()
    print(
        table(
            f"After {args.train_steps} steps (train loss, last 100: "
            f"{report['train_loss_last_100']:.3f} bits/dim)",
            report["trained"],
        )
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
