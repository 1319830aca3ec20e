"""The shared runner of the process comparisons (`mulan_vs_vdm.py`, `mdm_vs_vp.py`): each
model is the digits job with a list of config overrides, trained per seed at equal steps
and evaluated on the held-out split alike.

Each trained EMA model is evaluated on the held-out split with the same settings:

- ELBO: the continuous-time bound, `--elbo-repeats` draws of time, noise (and auxiliary
  state) per example, over `--eval-examples` test images; the auxiliary term of the
  bound (MuLAN's latent KL, an MDM's $\log q(v_0 \mid x)$) is reported separately;
- ODE: the probability-flow ODE bound (Tsit5, rtol = atol = 1e-5, one Hutchinson probe
  per solve), dequantised by the process's own $q(z_0 \mid x)$ and decoder, importance-
  weighted over `--ode-samples` draws (of the dequantisation, and jointly of the
  auxiliary state), over the first `--ode-examples` test images.

Rows are appended to the JSON file as each run finishes, so an interrupted comparison keeps
its finished runs; runs already in the file are skipped.
"""

import argparse
import json
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from _report import machine
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


def run_one(overrides, data, model_name, seed, args, workdir):
    overrides = [
        *overrides,
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
    # Where the bound starts (learned or not): its first time and the data's mean negative
    # log-SNR there.
    process = model.process
    start_state = process.initial_state(key, xs[0]).state
    gamma_start = jnp.mean(process.gamma(start_state, process.t_min))
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
        "auxiliary": float(jnp.mean(terms.auxiliary)),
        "t_min": float(process.t_min),
        "gamma_start": float(gamma_start),
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
        "\n| data | model | seeds | ELBO bits/dim | ODE bits/dim | auxiliary term | train s |"
        "\n|---|---|---|---|---|---|---|"
    )
    keys = sorted({(r["data"], r["model"]) for r in rows})
    for data, model in keys:
        group = [r for r in rows if r["data"] == data and r["model"] == model]
        elbo = np.array([r["elbo"] for r in group])
        ode = np.array([r["ode"] for r in group])
        auxiliary = np.mean([r.get("auxiliary", r.get("latent")) for r in group])
        print(
            f"| {data} | {model} | {len(group)} | {_spread(elbo)} | {_spread(ode)} "
            f"| {auxiliary:.3f} "
            f"| {np.mean([r['train_seconds'] for r in group]):.0f} |"
        )
    print("\nper run:")
    for r in rows:
        print(
            f"  {r['data']:8s} {r['model']:14s} seed {r['seed']}: ELBO {r['elbo']:.4f} "
            f"(se {r['elbo_se']:.4f}), ODE {r['ode']:.4f} (se {r['ode_se']:.4f})"
            + (f", starts at gamma {r['gamma_start']:.2f}" if "gamma_start" in r else "")
        )


def main(description, models, data, default_models, name):
    """Parse the command line and run `models` (name to overrides, or to a function of the
    data's name giving them) on `data` (name to overrides) for each seed; `name` names the
    default run folder and JSON file."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", choices=sorted(data), default="digits")
    parser.add_argument("--models", nargs="+", choices=sorted(models), default=default_models)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-examples", type=int, default=512)
    parser.add_argument("--elbo-repeats", type=int, default=32)
    parser.add_argument("--ode-examples", type=int, default=128)
    parser.add_argument("--ode-samples", type=int, default=4)
    parser.add_argument("--workdir", default=f"runs/{name}")
    parser.add_argument("--out", default=f"benchmarks/results/{name}.json")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = json.loads(out.read_text()) if out.exists() else {"rows": []}
    report["machine"] = machine()
    done = {(r["data"], r["model"], r["seed"], r["steps"]) for r in report["rows"]}
    for seed in args.seeds:
        for model_name in args.models:
            if (args.data, model_name, seed, args.steps) in done:
                continue
            workdir = pathlib.Path(args.workdir) / f"{args.data}_{model_name}_{args.steps}_{seed}"
            model = models[model_name]
            overrides = [*data[args.data], *(model(args.data) if callable(model) else model)]
            row = run_one(overrides, args.data, model_name, seed, args, workdir)
            print(json.dumps(row), flush=True)
            report["rows"].append(row)
            out.write_text(json.dumps(report, indent=2))
    summarise([r for r in report["rows"] if r["steps"] == args.steps])
    print(f"\nbits/dim: mean +- std over seeds. Wrote {out}.")
