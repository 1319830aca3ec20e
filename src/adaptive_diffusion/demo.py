"""`make demo`: train VDM on scikit-learn's 8x8 digits, evaluate it, draw it, summarise.

The same job as `adaptive-diffusion train --config digits` followed by `eval` and
`sample`, in one process: the shipped `digits` config (a VP process with VDM's learned
schedule and an MLP predicting the noise, about three minutes on 2 CPU cores), then
the held-out negative ELBO and the probability-flow ODE bound on the 297 test digits
(bits/dim, with 95% confidence intervals), `samples.png` and `schedule.png` in the run
folder, and a summary table. Re-running it resumes (or, when finished, re-evaluates)
the run in `--workdir`. Run `python -m adaptive_diffusion.demo --help`.
"""

import argparse
import math
import pathlib
import time

import jax
import numpy as np

from .train import (
    BitsPerDim,
    Config,
    config_path,
    eval_model,
    evaluate,
    make_mesh,
    make_source,
    train,
)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--config", default="digits", help="a digits config: digits or digits_nonisotropic"
    )
    parser.add_argument("--workdir", default="runs/demo", help="the run folder")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the digits config, e.g. --set steps=2000",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    progress = not args.no_progress
    config = Config.from_yaml(config_path(args.config)).with_overrides(args.overrides)
    workdir = pathlib.Path(args.workdir)
    print(f"training {args.config} for {config.steps} steps in {workdir}; devices {jax.devices()}")
    start = time.perf_counter()
    state = train(config, workdir, resume=True, progress=progress)
    seconds = time.perf_counter() - start

    model = eval_model(state)
    test = make_source(config.data, "test")
    mesh = make_mesh(config.mesh.data)
    key_elbo, key_ode = jax.random.split(jax.random.key(config.seed + 1))
    elbo = evaluate(model, test, method="elbo", key=key_elbo, mesh=mesh, progress=progress)
    ode = evaluate(model, test, method="ode", key=key_ode, mesh=mesh, progress=progress)
    uniform = math.log2(test.num_levels)

    rows = [
        ("training steps", f"{int(state.step)}"),
        ("training time (s)", f"{seconds:.0f}"),
        ("uniform model (bits/dim)", f"{uniform:.3f}"),
        ("held-out ELBO (bits/dim)", _with_interval(elbo.mean, elbo.ci95)),
        ("held-out ODE (bits/dim)", _with_interval(ode.mean, ode.ci95)),
        ("ODE median (bits/dim)", f"{np.median(ode.values):.3f}"),
        ("ODE solver error (bits/dim)", _solver_error(ode)),
        ("samples", str(workdir / "samples.png")),
        ("noise schedule", str(workdir / "schedule.png")),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"\nsummary: {len(test)} held-out digits, {test.num_levels} levels")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    median = float(np.median(ode.values))
    return {"elbo_bpd": elbo.mean, "ode_bpd": ode.mean, "ode_bpd_median": median}


def _solver_error(result: BitsPerDim) -> str:
    error = result.solver_error
    assert error is not None, "the ODE figure is checked by default"
    return f"{error.bias:+.4f} +- {error.stderr:.4f} at rtol = atol = {error.tolerance:.0e}"


def _with_interval(mean: float, interval: tuple[float, float]) -> str:
    return f"{mean:.3f}  95% CI [{interval[0]:.3f}, {interval[1]:.3f}]"


if __name__ == "__main__":
    main()
