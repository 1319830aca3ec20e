"""The probability-flow drift of `NonIsotropicVP` for an eps-network: one FFT pair, not three.

`f x - 0.5 g^2 Sigma grad log p` with the score `-Sigma^{-1/2} eps_hat / sigma` is
`f x + 0.5 g^2 Sigma^{1/2} eps_hat / sigma`: one application of `Sigma^{1/2}`
(`probability_flow_eps`, the route `ad.score_fn` takes), against `Sigma^{-1/2}` in
`score_from_eps` and `Sigma^{1/2}` twice in `diffusion_covariance` (the score route, what
an opaque `score(u, t)` callable gets). The denoiser is a fixed elementwise function, so
the drift's own cost shows; a real network adds the same cost to both routes.

For each shape: the FFTs in the compiled drift (counted in the jaxpr), the time of the
drift and of its forward-mode linearisation (what the ODE's trace estimator evaluates),
for a batch of `--batch` examples, best of `--repeats`. Prints a table and writes JSON:

    python benchmarks/probability_flow.py [--batch 64] [--out PATH]
"""

import argparse
import json
import pathlib
import platform
import time

import jax
import jax.numpy as jnp

import adaptive_diffusion as ad


SHAPES = [(1, 16, 16), (3, 32, 32), (3, 64, 64)]


def eps_model(u, t):
    return jnp.tanh(u) * (1.0 + t)


def routes(process):
    """The drift of each route, as `drift(u, t)`."""
    model_score = ad.score_fn(process, eps_model)
    opaque = ad.CallableScore(model_score)
    return {
        "score route": lambda u, t: opaque.probability_flow(process, u, t),
        "eps route": lambda u, t: model_score.probability_flow(process, u, t),
    }


def _count(jaxpr, name: str) -> int:
    """Equations of primitive `name` in a jaxpr and the jaxprs nested in it."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        total += eqn.primitive.name == name
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else [param]:
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    total += _count(sub, name)
    return total


def count_ffts(fn, u) -> int:
    """FFTs (forward and inverse) in one evaluation of the drift."""
    return _count(jax.make_jaxpr(lambda u: fn(u, 0.4))(u), "fft")


def best_seconds(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def measure(shape, batch, repeats):
    process = ad.NonIsotropicVP(ad.LinearSchedule(), ad.GFFCovariance(shape))
    us = jax.random.normal(jax.random.key(0), (batch, *shape))
    probes = jax.random.rademacher(jax.random.key(1), (batch, *shape), dtype=us.dtype)
    rows = []
    for name, drift in routes(process).items():
        value = jax.jit(jax.vmap(lambda u: drift(u, 0.4)))

        def divergence(u, v, drift=drift):
            _, jvp = jax.linearize(lambda w: drift(w, 0.4), u)
            return jnp.vdot(v, jvp(v))

        linearised = jax.jit(jax.vmap(divergence))
        rows.append(
            {
                "shape": list(shape),
                "route": name,
                "ffts": count_ffts(drift, us[0]),
                "drift_ms": 1e3 * best_seconds(value, (us,), repeats),
                "linearised_ms": 1e3 * best_seconds(linearised, (us, probes), repeats),
            }
        )
    reference = jax.vmap(lambda u: routes(process)["score route"](u, 0.4))(us)
    fast = jax.vmap(lambda u: routes(process)["eps route"](u, 0.4))(us)
    error = float(jnp.max(jnp.abs(fast - reference)) / jnp.max(jnp.abs(reference)))
    for row in rows:
        row["max_relative_difference"] = error
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/probability_flow.json")
    args = parser.parse_args()
    rows = [row for shape in SHAPES for row in measure(shape, args.batch, args.repeats)]
    print(f"{'shape':>12} {'route':>12} {'FFTs':>5} {'drift ms':>9} {'+ jvp ms':>9}")
    for row in rows:
        shape = "x".join(map(str, row["shape"]))
        print(
            f"{shape:>12} {row['route']:>12} {row['ffts']:>5} {row['drift_ms']:9.2f} "
            f"{row['linearised_ms']:9.2f}"
        )
    print(
        f"largest relative difference between the routes: "
        f"{max(r['max_relative_difference'] for r in rows):.1e}"
    )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "backend": jax.default_backend()}
    out.write_text(json.dumps({"machine": machine, "batch": args.batch, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
