"""VDM (learned scalar schedule) against MuLAN at equal steps: held-out bits/dim.

For each seed, two runs of the training job differ only in the process: `digits.yaml`
(VDM: a scalar VP process with the learned monotone schedule) and the same config with
`process.kind=mulan` (MuLAN's per-pixel polynomial schedule conditioned on a categorical
latent of 8 categories, `digits_mulan.yaml`'s, with an MLP encoder). Both learn their
two endpoints, and both denoisers (the MLP, width 256, depth 3, with the input's Fourier
features matched to the data's bins; MuLAN's sees twice the channels and the latent) are
the same, as are the optimiser, batch, steps and seed; `--models` adds the ablations
(see `MODELS`). On `--data patches` both train on 8 x 8 RGB patches of scikit-learn's
sample photos (256 levels) instead of the digits (17 levels), both without Fourier
features, as `patches.yaml` and `patches_mulan.yaml` ship.

Each trained EMA model is evaluated on the held-out split with the same settings:

- ELBO: the continuous-time bound, `--elbo-repeats` draws of time, noise (and latent)
  per example, over `--eval-examples` test images; MuLAN's includes its latent term
  $\\mathrm{KL}(q(z \\mid x) \\Vert p(z))$, reported separately as `latent`;
- ODE: the probability-flow ODE bound (Tsit5, rtol = atol = 1e-5, one Hutchinson probe
  per solve), dequantised by the process's own $q(z_0 \\mid x)$ and decoder, importance-
  weighted over `--ode-samples` draws (of the dequantisation, and for MuLAN jointly of
  the latent), over the first `--ode-examples` test images.

Rows are appended to the JSON file as each run finishes, so an interrupted comparison keeps
its finished runs; runs already in the file are skipped.

    python benchmarks/mulan_vs_vdm.py --data digits --steps 4000 --seeds 0 1 2
    python benchmarks/mulan_vs_vdm.py --data patches --steps 2000 --seeds 0 1 2
    python benchmarks/mulan_vs_vdm.py --data digits --steps 4000 --seeds 0 \\
        --models mulan_nolatent mulan_monotone --out benchmarks/results/mulan_ablation.json
"""

import argparse
import json
import pathlib
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from adaptive_diffusion.data import levels_to_centres
from adaptive_diffusion.train import (
    config_path,
    eval_model,
    evaluate,
    load_config,
    make_mesh,
    make_source,
    train,
)


_VDM = ["process.kind=vp", "process.schedule=learned", "process.endpoints=learned"]
_MULAN = [
    "process.kind=mulan",
    "process.schedule=polynomial",
    "process.encoder=mlp",
    "process.latent=categorical",
    "process.latent_size=8",
    "process.endpoints=learned",
]
MODELS = {
    # The comparison: both learn their schedule's two endpoints (VDM's `LearnedSchedule`
    # always has; MuLAN's shared learned endpoints are a departure from its reference),
    # and both denoisers get the input's Fourier features matched to the data's bins.
    # MuLAN's latent is `digits_mulan.yaml`'s: categorical, 8 categories.
    "vdm": _VDM,
    "mulan": _MULAN,
    # Ablations, each one change (later overrides win): the reference's top-k latent
    # (50 units, 15 hot; and with a smaller perturbation); fixed endpoints (the
    # reference's `poly_fixedend`, VDM's schedule with its ends pinned); no latent (a
    # learned per-pixel schedule); VDM's monotone network (conditioned on z) in place of
    # the polynomial; no Fourier features.
    "mulan_topk": [*_MULAN, "process.latent=topk", "process.latent_size=0"],
    # The same with the top-k noise as small as the reference's (its Gamma scale i/k
    # gives a standard deviation of 0.22 against 3.24 for I-MLE's k/i at tau = 10; tau =
    # 0.69 matches it, see `ad.SumOfGammaPerturbation`).
    "mulan_topk_tau07": [
        *_MULAN,
        "process.latent=topk",
        "process.latent_size=0",
        "process.latent_tau=0.69",
    ],
    "mulan_fixed": [*_MULAN, "process.endpoints=fixed"],
    "vdm_fixed": [*_VDM, "process.endpoints=fixed"],
    "mulan_nolatent": [*_MULAN, "process.latent=none", "process.latent_size=0"],
    "mulan_monotone": [*_MULAN, "process.schedule=learned"],
    "mulan_nofourier": [*_MULAN, "network.fourier=none"],
    "vdm_nofourier": [*_VDM, "network.fourier=none"],
}
DATA = {
    "digits": [],
    # The shipped patches configs' choice: no Fourier features (they cost 0.9 bits/dim
    # on 256 levels at 1500 steps; see `network.fourier`).
    "patches": ["data.source=patches", "data.patch_size=8", "network.fourier=none"],
}


def run_one(data, model_name, seed, args, workdir):
    overrides = [
        *DATA[data],
        *MODELS[model_name],
        f"seed={seed}",
        f"steps={args.steps}",
        f"eval_every={args.steps}",
        f"checkpoint_every={args.steps}",
        f"log_every={min(500, args.steps)}",
        f"eval.examples={args.eval_examples}",
        f"eval.ode_samples={args.ode_samples}",
        "eval.dequantization=process",
    ]
    config = load_config(config_path("digits"), overrides)
    start = time.perf_counter()
    state = train(config, workdir, resume=True, progress=False, pictures=seed == args.seeds[0])
    train_seconds = time.perf_counter() - start
    model = eval_model(state)
    test = make_source(config.data, "test")
    mesh = make_mesh(-1)
    key = jax.random.key(1000 + seed)
    elbo = evaluate(
        model,
        test,
        method="elbo",
        key=key,
        mesh=mesh,
        num_examples=args.eval_examples,
        batch_size=128,
        repeats=args.elbo_repeats,
        progress=False,
    )
    count = min(args.eval_examples, len(test))
    xs = jnp.asarray(levels_to_centres(test[np.arange(count)], test.num_levels))
    terms = eqx.filter_jit(lambda m, xs, k: m.nelbo(xs, key=k))(model, xs, key)
    start = time.perf_counter()
    ode = evaluate(
        model,
        test,
        method="ode",
        key=jax.random.fold_in(key, 1),
        mesh=mesh,
        num_examples=args.ode_examples,
        batch_size=64,
        progress=False,
    )
    return {
        "data": data,
        "model": model_name,
        "seed": seed,
        "steps": args.steps,
        "train_seconds": train_seconds,
        "elbo": elbo.mean,
        "elbo_se": elbo.stderr,
        "elbo_examples": len(elbo.values),
        "elbo_repeats": args.elbo_repeats,
        "latent": float(jnp.mean(terms.auxiliary)),
        "ode": ode.mean,
        "ode_se": ode.stderr,
        "ode_examples": len(ode.values),
        "ode_samples": args.ode_samples,
        "ode_seconds": time.perf_counter() - start,
    }


def _spread(values):
    """`mean +- std` over seeds (the mean alone for one seed)."""
    values = np.asarray(values)
    if len(values) < 2:
        return f"{values.mean():.3f}"
    return f"{values.mean():.3f} +- {values.std(ddof=1):.3f}"


def summarise(rows):
    print(
        "\n| data | model | seeds | ELBO bits/dim | ODE bits/dim | latent KL term | train s |"
        "\n|---|---|---|---|---|---|---|"
    )
    keys = sorted({(r["data"], r["model"]) for r in rows})
    for data, model in keys:
        group = [r for r in rows if r["data"] == data and r["model"] == model]
        elbo = np.array([r["elbo"] for r in group])
        ode = np.array([r["ode"] for r in group])
        latent = np.mean([r["latent"] for r in group])
        print(
            f"| {data} | {model} | {len(group)} | {_spread(elbo)} | {_spread(ode)} | {latent:.3f} "
            f"| {np.mean([r['train_seconds'] for r in group]):.0f} |"
        )
    print("\nper run:")
    for r in rows:
        print(
            f"  {r['data']:8s} {r['model']:6s} seed {r['seed']}: ELBO {r['elbo']:.4f} "
            f"(se {r['elbo_se']:.4f}), ODE {r['ode']:.4f} (se {r['ode_se']:.4f})"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=sorted(DATA), default="digits")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["vdm", "mulan"])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-examples", type=int, default=512)
    parser.add_argument("--elbo-repeats", type=int, default=32)
    parser.add_argument("--ode-examples", type=int, default=128)
    parser.add_argument("--ode-samples", type=int, default=4)
    parser.add_argument("--workdir", default="runs/mulan_vs_vdm")
    parser.add_argument("--out", default="benchmarks/results/mulan_vs_vdm.json")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = json.loads(out.read_text()) if out.exists() else {"rows": []}
    report["machine"] = {"platform": platform.platform(), "devices": str(jax.devices())}
    done = {(r["data"], r["model"], r["seed"], r["steps"]) for r in report["rows"]}
    for seed in args.seeds:
        for model_name in args.models:
            if (args.data, model_name, seed, args.steps) in done:
                continue
            workdir = pathlib.Path(args.workdir) / f"{args.data}_{model_name}_{args.steps}_{seed}"
            row = run_one(args.data, model_name, seed, args, workdir)
            print(json.dumps(row), flush=True)
            report["rows"].append(row)
            out.write_text(json.dumps(report, indent=2))
    summarise([r for r in report["rows"] if r["steps"] == args.steps])
    print(f"\nbits/dim: mean +- std over seeds. Wrote {out}.")


if __name__ == "__main__":
    main()
