"""The sum-of-Gamma perturbation of MuLAN's top-k latent: the library's exact GS sampler
against `jax.random.gamma` and, for scale, as many Gumbel draws.

One digits train step's worth (batch 128, 50 logits, 10 Gamma terms of shape 1/15 each),
vmapped over the batch as in the step, jitted; `--rounds` interleaved rounds of 20 calls,
the median per call.

    python benchmarks/gamma_draws.py [--rounds 9]

Prints a table and writes JSON (`--out`).
"""

import argparse
import statistics
import time

import jax

from _report import machine, write_report
from adaptive_diffusion import SumOfGammaPerturbation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", default="benchmarks/results/gamma_draws.json")
    args = parser.parse_args()
    batch, size, k = 128, 50, 15
    perturbation = SumOfGammaPerturbation()
    draws = {
        "SumOfGammaPerturbation (GS)": lambda key: perturbation(key, (size,), k),
        "jax.random.gamma, same draws": lambda key: jax.random.gamma(
            key, 1.0 / k, (perturbation.num_terms, size)
        ),
        "jax.random.gumbel, as many": lambda key: jax.random.gumbel(
            key, (perturbation.num_terms, size)
        ),
    }
    compiled = {name: jax.jit(jax.vmap(f)) for name, f in draws.items()}
    keys = [jax.random.split(jax.random.key(i), batch) for i in range(20)]
    for f in compiled.values():
        jax.block_until_ready(f(keys[0]))
    times: dict[str, list[float]] = {name: [] for name in compiled}
    for _ in range(args.rounds):
        for name, f in compiled.items():
            start = time.perf_counter()
            for key in keys:
                out = f(key)
            jax.block_until_ready(out)
            times[name].append(1e3 * (time.perf_counter() - start) / len(keys))
    print(f"{'draws (batch 128 x 10 x 50)':<30} {'ms':>7}")
    print("-" * 38)
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<30} {median:>7.2f}")
        rows.append({"draws": name, "ms": values, "ms_median": median})
    write_report(args.out, {"meta": {**machine(), "rounds": args.rounds}, "rows": rows})


if __name__ == "__main__":
    main()
