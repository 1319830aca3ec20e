"""Sigma^{1/2} x for a Gaussian-free-field covariance: FFT against a dense matrix.

For each shape, `GFFCovariance.sqrt_apply` (rfft2 / irfft2 per channel: O(N log N) time,
O(N) memory) against a dense (N, N) matrix-vector product with the same symmetric square
root (built once, column by column with `sqrt_apply`, and not timed; the two results are
checked to agree). Dense runs only where the matrix fits in `--dense-limit-mib`.

- time: best of `--repeats` runs of a jitted call, each the mean over enough calls to
  last about `--min-seconds`; for one vector per call (latency, dispatch included) and
  for `--batch` vectors per call (throughput per vector, where dense becomes a matrix
  product, its most favourable case).
- memory: what XLA's compiled program for one vector holds, from
  `compiled.memory_analysis()`: arguments (the dense matrix; for the FFT the vector only,
  the spectrum being computed inside), temporaries and output.

Prints a table and writes JSON:

    python benchmarks/gff_apply.py [--batch 64] [--dense-limit-mib 1024] [--out PATH]
"""

import argparse
import json
import math
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import adaptive_diffusion as ad


SHAPES = [(1, 16, 16), (3, 32, 32), (3, 64, 64)]


def dense_sqrt(cov: ad.GFFCovariance, chunk: int = 1024) -> jax.Array:
    """The (N, N) matrix of `cov.sqrt_apply`, column by column in chunks."""
    n = math.prod(cov.shape)
    apply = jax.jit(jax.vmap(lambda e: cov.sqrt_apply(e.reshape(cov.shape)).reshape(-1)))
    columns = [
        np.asarray(apply(jnp.eye(chunk, n, k=start)))
        for start in range(0, n, chunk)  # rows of the identity from `start`
    ]
    # Sigma^{1/2} is symmetric: its columns are its rows.
    return jnp.asarray(np.concatenate(columns, axis=0)[:n])


def seconds_per_call(fn, args, repeats: int, min_seconds: float) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        if time.perf_counter() - start > min_seconds:
            break
        calls *= 2
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def compiled_bytes(fn, args) -> int:
    stats = fn.lower(*args).compile().memory_analysis()
    return stats.argument_size_in_bytes + stats.temp_size_in_bytes + stats.output_size_in_bytes


def measure(shape, batch, dense_limit_mib, repeats, min_seconds):
    cov = ad.GFFCovariance(shape=shape, power=1.0)
    n = math.prod(shape)
    x = jax.random.normal(jax.random.key(0), shape)
    xs = jax.random.normal(jax.random.key(1), (batch, *shape))
    fft_one = jax.jit(cov.sqrt_apply)
    fft_batch = jax.jit(jax.vmap(cov.sqrt_apply))
    row = {
        "shape": list(shape),
        "n": n,
        "fft_seconds": seconds_per_call(fft_one, (x,), repeats, min_seconds),
        "fft_seconds_per_vector_batched": seconds_per_call(fft_batch, (xs,), repeats, min_seconds)
        / batch,
        "fft_bytes": compiled_bytes(fft_one, (x,)),
    }
    dense_mib = n * n * 4 / 2**20
    row["dense_matrix_mib"] = dense_mib
    if dense_mib > dense_limit_mib:
        return row
    matrix = dense_sqrt(cov)
    np.testing.assert_allclose(
        (matrix @ x.reshape(-1)).reshape(shape), fft_one(x), rtol=1e-4, atol=1e-4
    )
    dense_one = jax.jit(lambda a, v: (a @ v.reshape(-1)).reshape(v.shape))
    dense_batch = jax.jit(lambda a, v: (v.reshape(v.shape[0], -1) @ a).reshape(v.shape))
    row["dense_seconds"] = seconds_per_call(dense_one, (matrix, x), repeats, min_seconds)
    row["dense_seconds_per_vector_batched"] = (
        seconds_per_call(dense_batch, (matrix, xs), repeats, min_seconds) / batch
    )
    row["dense_bytes"] = compiled_bytes(dense_one, (matrix, x))
    row["speedup"] = row["dense_seconds"] / row["fft_seconds"]
    row["speedup_batched"] = (
        row["dense_seconds_per_vector_batched"] / row["fft_seconds_per_vector_batched"]
    )
    row["memory_ratio"] = row["dense_bytes"] / row["fft_bytes"]
    return row


def _fmt(row, key, scale=1.0, spec="10.1f"):
    return format(row[key] * scale, spec) if key in row else f"{'-':>{spec.split('.')[0]}}"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dense-limit-mib", type=float, default=1024.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=0.2)
    parser.add_argument("--out", default="benchmarks/results/gff_apply.json")
    args = parser.parse_args()

    rows = [
        measure(shape, args.batch, args.dense_limit_mib, args.repeats, args.min_seconds)
        for shape in SHAPES
    ]
    print(
        f"{'shape':>10s} {'N':>6s} | {'fft us':>10s} {'dense us':>10s} {'speed-up':>9s} | "
        f"{'fft us/v':>10s} {'dense us/v':>10s} {'speed-up':>9s} | "
        f"{'fft KiB':>10s} {'dense KiB':>10s} {'mem ratio':>9s}"
    )
    print(f"{'':>17s} | {'one vector per call':^31s} | {f'batch of {args.batch}':^31s} |")
    for r in rows:
        print(
            f"{'x'.join(map(str, r['shape'])):>10s} {r['n']:6d} | "
            f"{_fmt(r, 'fft_seconds', 1e6)} {_fmt(r, 'dense_seconds', 1e6)} "
            f"{_fmt(r, 'speedup', spec='9.1f')} | "
            f"{_fmt(r, 'fft_seconds_per_vector_batched', 1e6)} "
            f"{_fmt(r, 'dense_seconds_per_vector_batched', 1e6)} "
            f"{_fmt(r, 'speedup_batched', spec='9.1f')} | "
            f"{_fmt(r, 'fft_bytes', 1 / 1024)} {_fmt(r, 'dense_bytes', 1 / 1024)} "
            f"{_fmt(r, 'memory_ratio', spec='9.1f')}"
        )
    skipped = [r for r in rows if "dense_seconds" not in r]
    for r in skipped:
        print(
            f"dense skipped for {'x'.join(map(str, r['shape']))}: its matrix needs "
            f"{r['dense_matrix_mib']:.0f} MiB > --dense-limit-mib {args.dense_limit_mib:.0f}"
        )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "device": str(jax.devices()[0]),
                "cpu_count": os.cpu_count(),
                "platform": platform.platform(),
                "jax": jax.__version__,
                "batch": args.batch,
                "dense_limit_mib": args.dense_limit_mib,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
