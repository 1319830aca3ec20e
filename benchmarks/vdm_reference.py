"""The library's UNet train step beside Google VDM's own Flax step, on the same machine.

VDM's model is imported from a checkout of github.com/google-research/vdm given by
`--vdm-repo` (its `model_vdm.py` needs only `flax` and `chex` besides jax and numpy:
`pip install flax chex`); nothing of it is copied here. Its step is the one of the
reference's `experiment.py` without the `pmap` and the `lax.scan` over substeps: the
loss is `model_vdm.VDM`'s reconstruction + latent + diffusion terms in bits/dim with
antithetic times, gradients by `jax.value_and_grad`, AdamW with VDM's CIFAR-10
settings (lr 2e-4, b1 0.9, b2 0.99, eps 1e-8, weight decay 0.01) and its EMA of the
parameters (0.9999). The configuration is the reference's small one: 32x32x3 images,
2 ResNet layers of 64 channels, attention in the middle only (one head), Fourier
features, dropout 0.1, batch 8, continuous time, a learned scalar schedule.

The library's step is `benchmarks/train_step.py`'s (the real `train.make_train_step`
with the VP NELBO, AdamW and EMA, the same architecture). VDM's step is timed as
shipped (XLA's default compiler options, under which recent jaxlib runs CPU
convolutions in YNNPACK) and, for a like-with-like row, compiled with the options the
library's step uses (`train.default_compiler_options`). All steps are compiled first,
then timed interleaved (library, VDM, VDM with options, library, ...) so that a shared
machine slows them alike; the ratios are medians of per-round ratios.

    python benchmarks/vdm_reference.py --vdm-repo PATH [--reps 7] [--out PATH]

Prints a table and writes JSON.
"""

import argparse
import importlib
import math
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from _report import machine, write_report
from adaptive_diffusion import train
from train_step import Step, build


class VDMStep:
    """VDM's own model, loss, AdamW and EMA as one jitted step, with its running state."""

    def __init__(self, model_vdm, channels: int, n_layers: int, batch_size: int, options):
        config = model_vdm.VDMConfig(
            vocab_size=256,
            sample_softmax=False,
            antithetic_time_sampling=True,
            with_fourier_features=True,
            with_attention=False,
            gamma_type="learnable_scalar",
            gamma_min=-13.3,
            gamma_max=5.0,
            sm_n_timesteps=0,
            sm_n_embd=channels,
            sm_n_layer=n_layers,
            sm_pdrop=0.1,
        )
        model = model_vdm.VDM(config)
        levels = np.random.default_rng(0).integers(0, 256, (batch_size, 32, 32, 3))
        self.images = jnp.asarray(levels, jnp.uint8)
        self.conditioning = jnp.zeros((batch_size,))
        params = model.init(
            {"params": jr.key(0), "sample": jr.key(1)},
            images=self.images[:2],
            conditioning=self.conditioning[:2],
        )["params"]
        optimizer = optax.adamw(2e-4, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.01)
        to_bpd = 1.0 / (math.prod(self.images.shape[1:]) * math.log(2.0))

        def loss(params, images, conditioning, key):
            sample_key, dropout_key = jr.split(key)
            out = model.apply(
                {"params": params},
                images=images,
                conditioning=conditioning,
                rngs={"sample": sample_key, "dropout": dropout_key},
                deterministic=False,
            )
            terms = jnp.mean(out.loss_recon) + jnp.mean(out.loss_klz) + jnp.mean(out.loss_diff)
            return terms * to_bpd

        def step(state, images, conditioning):
            params, ema, opt_state, count = state
            key = jr.fold_in(jr.key(2), count)
            bpd, grads = jax.value_and_grad(loss)(params, images, conditioning, key)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            ema = jax.tree.map(lambda e, p: 0.9999 * e + 0.0001 * p, ema, params)
            return (params, ema, opt_state, count + 1), bpd

        self.step = jax.jit(step, donate_argnums=0, compiler_options=options)
        self.state = (params, params, optimizer.init(params), jnp.zeros((), jnp.int32))
        self.state = jax.tree.map(jnp.copy, self.state)
        start = time.perf_counter()
        self.run()
        self.compile_s = time.perf_counter() - start

    def run(self) -> float:
        start = time.perf_counter()
        self.state, bpd = self.step(self.state, self.images, self.conditioning)
        jax.block_until_ready((self.state, bpd))
        if not np.isfinite(float(bpd)):
            raise FloatingPointError("VDM's loss is not finite")
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vdm-repo", required=True, help="a checkout of google-research/vdm")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/results/vdm_reference.json")
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.vdm_repo, "model_vdm.py")):
        sys.exit(f"--vdm-repo {args.vdm_repo!r} has no model_vdm.py: give a vdm checkout.")
    sys.path.insert(0, os.path.abspath(args.vdm_repo))
    model_vdm = importlib.import_module("model_vdm")
    load_start = os.getloadavg()

    channels, n_layers, batch = 64, 2, 8
    options = train.default_compiler_options(train.make_mesh())
    config, model = build(channels, n_layers)
    steps = {
        "library": Step(config, model, batch),
        "VDM, as shipped": VDMStep(model_vdm, channels, n_layers, batch, None),
    }
    if options:
        steps["VDM, library's options"] = VDMStep(model_vdm, channels, n_layers, batch, options)
    times = {k: [] for k in steps}
    for _ in range(args.reps):
        for k, s in steps.items():
            times[k].append(s.run())

    header = f"{'step':<24} {'compile s':>9} {'step ms':>9} {'vs VDM':>7}"
    print(f"VDM small config ({n_layers} x {channels}, batch {batch}), {args.reps} rounds")
    print(header)
    print("-" * len(header))
    rows = []
    for k, s in steps.items():
        ratios = [a / b for a, b in zip(times[k], times["VDM, as shipped"], strict=True)]
        row = {
            "step": k,
            "compile_s": s.compile_s,
            "step_ms": 1e3 * statistics.median(times[k]),
            "step_ms_all": [1e3 * t for t in times[k]],
            "ratio_to_vdm": statistics.median(ratios),
        }
        rows.append(row)
        print(
            f"{k:<24} {row['compile_s']:>9.1f} {row['step_ms']:>9.1f} {row['ratio_to_vdm']:>7.2f}"
        )
    meta = {
        "channels": channels,
        "n_layers": n_layers,
        "batch": batch,
        "compiler_options": options,
        "cpu_count": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "machine": machine(),
    }
    write_report(args.out, {"rows": rows, "meta": meta})


if __name__ == "__main__":
    main()
