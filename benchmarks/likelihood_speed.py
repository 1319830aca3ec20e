"""Probability-flow ODE likelihood: adaptive-diffusion against score_sde's method.

score_sde's `likelihood.py` integrates the probability-flow ODE with scipy's
`solve_ivp(RK45)` on the host, over the flattened batch, calling a jitted function for
the drift and the Hutchinson divergence (by reverse mode) at every evaluation. Here the
same model (a digits denoiser trained with the shipped `digits` config), the same
held-out digits (dequantised once by q(z_0 | x)), the same Rademacher probes and the same
tolerances go through both, and through `ad.ode_log_likelihood` (one jitted, vmapped
diffrax solve per example) with several solvers. Errors are against a float64 solve with
the same probes at rtol = atol = 1e-9 (the solver's own error, without the estimator's)
and against a float64 exact-trace solve ("exact": the estimator's too).

Three tables, in one run:

1. Work and precision: time, evaluations and errors per example of every method at every
   tolerance; "bias" is the mean signed solver error, what a test-set mean keeps. The
   "tuned grid" rows solve on the fixed grid `ad.tuned_grid` makes from the adaptive
   solves at that tolerance of other held-out digits.
2. Variance and cost of the trace estimators: the per-example standard deviation of the
   estimate about the exact trace's, its time, and their product var x time (the time
   to reach a given standard error over a test set; lower is better).
3. The test-set figure at equal error: score_sde's default (RK45 at 1e-5, one probe)
   against the cheapest of ours whose solver error bound |bias| + 2 stderr over the
   examples is no larger, with the speed-up.

Prints the tables and writes JSON:

    python benchmarks/likelihood_speed.py [--train-steps 3000] [--out PATH]
"""

import argparse
import json
import math
import pathlib
import tempfile
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

import adaptive_diffusion as ad
from _report import machine
from adaptive_diffusion import train
from adaptive_diffusion.data import DigitsSource, levels_to_centres


NUM_LEVELS = 17


def trained_model(steps: int) -> train.DiffusionModel:
    """The digits model after `steps` steps of the shipped config, without its EMA."""
    config = train.Config.from_yaml(train.config_path("digits")).with_overrides(
        [f"steps={steps}", "optimizer.ema_decay=0"]
    )
    with tempfile.TemporaryDirectory() as workdir:
        state = train.train(config, workdir, progress=False, pictures=False)
    return state.model


def score_sde_baseline(process, score, ys, probes):
    """scipy RK45 over the flattened batch, a jitted drift + VJP divergence per evaluation.

    Returns `run(tol) -> (log_prob, nfe)`; the jitted function is compiled once.
    """
    shape = ys.shape

    @jax.jit
    def drift_and_divergence(x, t, probes):
        def drift(x):
            return jax.vmap(lambda u: process.probability_flow(u, t, score(u, t)))(x)

        value, vjp = jax.vjp(drift, x)
        (grad,) = vjp(probes)
        return value, jnp.sum(grad * probes, axis=tuple(range(1, x.ndim)))

    def ode_func(t, state):
        x = jnp.asarray(state[: -shape[0]].reshape(shape), jnp.float32)
        value, div = drift_and_divergence(x, jnp.float32(t), probes)
        return np.concatenate([np.asarray(value).reshape(-1), np.asarray(div)]).astype(np.float64)

    def run(tol):
        init = np.concatenate([np.asarray(ys).reshape(-1), np.zeros(shape[0])])
        sol = solve_ivp(ode_func, (0.0, 1.0), init, rtol=tol, atol=tol, method="RK45")
        x1 = jnp.asarray(sol.y[: -shape[0], -1].reshape(shape), jnp.float32)
        log_prob = np.asarray(jax.vmap(process.prior_log_prob)(x1)) + sol.y[-shape[0] :, -1]
        return log_prob, np.full(shape[0], sol.nfev)

    return run


class FixedProbes(ad.AbstractTraceEstimator):
    """Hutchinson with given probes: the float64 reference must see the float32 solves'
    probes, and JAX draws other Rademacher signs when x64 is enabled."""

    probes: jax.Array

    def init(self, key, u):
        return self.probes.astype(u.dtype)

    def __call__(self, f, u, probes):
        return ad.HutchinsonTrace()(f, u, probes)


def ours(process, score, ys, keys, solver, estimator):
    """`ad.ode_log_likelihood`, jitted and vmapped: one adaptive solve per example; one
    compiled program for every tolerance (an array argument)."""

    @jax.jit
    def run(ys, keys, tol):
        def one(y, k):
            return ad.ode_log_likelihood(
                process, score, y, key=k, trace=estimator, solver=solver, rtol=tol, atol=tol
            )

        result = jax.vmap(one)(ys, keys)
        return result.log_prob, result.nfe

    return lambda tol: lambda: run(ys, keys, jnp.float32(tol))


def on_tuned_grid(process, score, ys, keys, tune_ys, tune_keys, solver, estimator):
    """`ad.ODELikelihood` on a fixed grid: `ad.tuned_grid` of the adaptive solves at the
    tolerance of other held-out digits (`tune_ys`), then every example on that grid. The
    tuning runs before the timing (a test set amortises it, as `train.evaluate` does with
    its checked examples); its seconds are in the row's JSON."""

    @jax.jit
    def ends(tol):
        controller = diffrax.PIDController(rtol=tol, atol=tol)
        likelihood = ad.ODELikelihood(ad.ODESolve(solver, controller), estimator)
        return jax.vmap(lambda y, k: likelihood.step_ends(process, score, y, key=k))(
            tune_ys, tune_keys
        )

    @jax.jit
    def run(ys, keys, grid):
        likelihood = ad.ODELikelihood(ad.ODESolve(solver, diffrax.StepTo(ts=grid)), estimator)
        result = jax.vmap(lambda y, k: likelihood(process, score, y, key=k))(ys, keys)
        return result.log_prob, result.nfe

    def make(tol):
        start = time.perf_counter()
        grid = ad.tuned_grid(ends(jnp.float32(tol)), 0.0, 1.0)
        TUNING_SECONDS[tol, type(solver).__name__] = time.perf_counter() - start
        return lambda: run(ys, keys, grid)

    return make


TUNING_SECONDS: dict[tuple[float, str], float] = {}


def reference(model, ys, probes):
    """float64 solves at rtol = atol = 1e-9: exact trace, and Hutchinson with `probes`."""
    with jax.enable_x64():
        model64 = jax.tree.map(
            lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model
        )
        score = ad.score_fn(model64.process, model64.model(), model64.parameterization)

        def solve(y, trace):
            return ad.ode_log_likelihood(
                model64.process,
                score,
                y,
                key=jax.random.key(0),
                trace=trace,
                solver=diffrax.Dopri8(),
                rtol=1e-9,
                atol=1e-9,
                max_steps=200_000,
            ).log_prob

        @jax.jit
        def run(ys, probes):
            exact = jax.vmap(lambda y: solve(y, ad.ExactTrace()))(ys)
            same = jax.vmap(lambda y, p: solve(y, FixedProbes(p)))(ys, probes)
            return exact, same

        exact, same = run(ys.astype(jnp.float64), probes.astype(jnp.float64))
        return np.asarray(exact), np.asarray(same)


def timed(fn, repeats=3):
    fn()  # compile and warm up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        best = min(best, time.perf_counter() - start)
    return best, out


def _errors(log_prob, target):
    """Mean absolute error, and the mean signed error (bias) with its standard error."""
    diff = np.asarray(log_prob, np.float64) - target
    return (
        float(np.mean(np.abs(diff))),
        float(np.mean(diff)),
        float(np.std(diff, ddof=1) / math.sqrt(len(diff))),
    )


def work_precision(methods, tols, n, exact, same_probe):
    rows = []
    for tol in tols:
        for name, make in methods.items():
            seconds, (log_prob, nfe) = timed(make(tol))
            err_exact = float(np.mean(np.abs(np.asarray(log_prob) - exact)))
            err_probe, bias, bias_se = _errors(log_prob, same_probe)
            rows.append(
                {
                    "method": name,
                    "tol": tol,
                    "seconds_per_example": seconds / n,
                    "nfe_per_example": float(np.mean(nfe)),
                    "max_nfe": float(np.max(nfe)),
                    "err_exact_nats": err_exact,
                    "err_same_probe_nats": err_probe,
                    "bias_nats": bias,
                    "bias_stderr_nats": bias_se,
                }
            )
    base = {r["tol"]: r["seconds_per_example"] for r in rows if r["method"] == BASELINE}
    print(
        f"{'method':30s} {'tol':>7s} {'ms/ex':>8s} {'nfe/ex':>7s} {'err exact':>10s} "
        f"{'err probe':>10s} {'bias +- se':>19s} {'speed-up':>8s}"
    )
    for r in rows:
        r["speedup_vs_score_sde"] = base[r["tol"]] / r["seconds_per_example"]
        print(
            f"{r['method']:30s} {r['tol']:7.0e} {1e3 * r['seconds_per_example']:8.2f} "
            f"{r['nfe_per_example']:7.1f} {r['err_exact_nats']:10.2e} "
            f"{r['err_same_probe_nats']:10.2e} {r['bias_nats']:+9.2e} +- "
            f"{r['bias_stderr_nats']:7.1e} {r['speedup_vs_score_sde']:8.2f}"
        )
    return rows


def estimator_variance(process, score, ys, keys, exact, tol):
    """Per-example spread of each trace estimator about the exact trace, and its cost."""
    estimators = {
        f"Hutchinson, {k} probe{'s' if k > 1 else ''}": ad.HutchinsonTrace(k) for k in (1, 2, 4, 8)
    }
    for k in (1, 2):
        estimators[f"Hutch++, {3 * k} products"] = ad.HutchPlusPlusTrace(k)
    estimators["exact trace (64 JVPs)"] = ad.ExactTrace()
    rows = []
    print(f"\ntrace estimators, Tsit5 at rtol = atol = {tol:g}")
    print(f"{'estimator':26s} {'ms/ex':>8s} {'std (nats)':>11s} {'var x time':>11s}")
    for name, estimator in estimators.items():
        seconds, (log_prob, _) = timed(
            ours(process, score, ys, keys, diffrax.Tsit5(), estimator)(tol)
        )
        std = float(np.std(np.asarray(log_prob, np.float64) - exact, ddof=1))
        per_example = seconds / len(ys)
        rows.append(
            {
                "estimator": name,
                "seconds_per_example": per_example,
                "std_nats": std,
                "var_x_seconds": std**2 * per_example,
            }
        )
        print(f"{name:26s} {1e3 * per_example:8.2f} {std:11.3f} {std**2 * per_example:11.2e}")
    return rows


def equal_error(rows):
    """score_sde's default against the cheapest of ours with no larger error bound."""

    def bound(r):
        return abs(r["bias_nats"]) + 2 * r["bias_stderr_nats"]

    default = next(r for r in rows if r["method"] == BASELINE and r["tol"] == 1e-5)
    ours_rows = [r for r in rows if r["method"] != BASELINE and bound(r) <= bound(default)]
    best = min(ours_rows, key=lambda r: r["seconds_per_example"])
    speedup = default["seconds_per_example"] / best["seconds_per_example"]
    print(
        f"\ntest-set figure at equal solver error (|bias| + 2 se, nats): score_sde RK45 1e-5 "
        f"{bound(default):.3f} in {1e3 * default['seconds_per_example']:.2f} ms/ex; "
        f"{best['method']} at {best['tol']:g}: {bound(best):.3f} in "
        f"{1e3 * best['seconds_per_example']:.2f} ms/ex, {speedup:.2f}x"
    )
    return {"baseline": default, "ours": best, "speedup": speedup}


BASELINE = "score_sde (scipy RK45, VJP)"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-steps", type=int, default=3000)
    parser.add_argument("--num-examples", type=int, default=64)
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-2, 1e-3, 1e-4, 1e-5])
    parser.add_argument("--variance-tol", type=float, default=1e-4)
    parser.add_argument(
        "--tune-examples", type=int, default=64, help="held-out digits the grids are tuned on"
    )
    parser.add_argument("--out", default="benchmarks/results/likelihood_speed.json")
    args = parser.parse_args()

    model = trained_model(args.train_steps)
    process = model.process
    score = ad.score_fn(process, model.model(), model.parameterization)
    test = DigitsSource("test")
    xs = jnp.asarray(levels_to_centres(test.images[: args.num_examples], NUM_LEVELS))
    n = xs.shape[0]
    keys_q = jax.random.split(jax.random.key(10), n)
    ys, _ = jax.vmap(lambda k, x: ad.ProcessDequantization()(process, k, x, NUM_LEVELS))(keys_q, xs)
    # Grids are tuned on the next digits of the test split, not on the measured ones.
    tune_xs = test.images[args.num_examples : args.num_examples + args.tune_examples]
    tune_xs = jnp.asarray(levels_to_centres(tune_xs, NUM_LEVELS))
    tune_keys_q = jax.random.split(jax.random.key(12), tune_xs.shape[0])
    tune_ys, _ = jax.vmap(lambda k, x: ad.ProcessDequantization()(process, k, x, NUM_LEVELS))(
        tune_keys_q, tune_xs
    )
    tune_keys = jax.random.split(jax.random.key(13), tune_xs.shape[0])
    keys = jax.random.split(jax.random.key(11), n)
    probes = jax.vmap(lambda k, y: ad.HutchinsonTrace().init(k, y)[0])(keys, ys)
    # ours draws the same probes from the same keys: its small 'err probe' column shows it.

    exact, same_probe = reference(model, ys, probes[:, None])

    baseline = score_sde_baseline(process, score, ys, probes)
    methods = {BASELINE: lambda tol: lambda: baseline(tol)}
    for solver, modes in (
        (diffrax.Tsit5(), ("JVP", "VJP")),
        (diffrax.Dopri5(), ("JVP",)),
        (diffrax.Bosh3(), ("JVP",)),
        (diffrax.Dopri8(), ("JVP",)),
    ):
        for label in modes:
            mode = ad.ForwardMode() if label == "JVP" else ad.ReverseMode()
            name = f"diffrax {type(solver).__name__} vmap, {label}"
            methods[name] = ours(
                process, score, ys, keys, solver, ad.HutchinsonTrace(products=mode)
            )
    for solver in (diffrax.Tsit5(), diffrax.Dopri5()):
        name = f"diffrax {type(solver).__name__} tuned grid, JVP"
        methods[name] = on_tuned_grid(
            process, score, ys, keys, tune_ys, tune_keys, solver, ad.HutchinsonTrace()
        )

    rows = work_precision(methods, args.tols, n, exact, same_probe)
    for r in rows:
        solver = r["method"].split()[1]
        if "tuned grid" in r["method"]:
            r["tuning_seconds"] = TUNING_SECONDS[r["tol"], solver]
    variance = estimator_variance(process, score, ys, keys, exact, args.variance_tol)
    comparison = equal_error(rows)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": machine(),
                "num_examples": n,
                "train_steps": args.train_steps,
                "rows": rows,
                "estimators": variance,
                "equal_error": comparison,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
