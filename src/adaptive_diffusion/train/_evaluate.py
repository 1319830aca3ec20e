"""Held-out bits/dim with a confidence interval, and batches of samples, over a mesh."""

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterator
from typing import Literal, get_args

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jaxtyping import Array, Float, PRNGKeyArray
from tqdm.auto import tqdm

from .._error_budget import SolverError, choose_tolerance, mean_interval, solver_error
from .._likelihood import tuned_grid
from .._sampling import sample_ancestral, sample_ddim, sample_ode, sample_sde
from ..data import AbstractImageSource, batch_pipeline
from ._model import DiffusionModel, Sampler
from ._step import shard_batch


Method = Literal["elbo", "vlb", "ode", "denoising"]

METHODS: tuple[str, ...] = get_args(Method)
"""The held-out figures `evaluate` computes."""

SAMPLERS: dict[str, Sampler] = {
    "ancestral": sample_ancestral,
    "ddim": sample_ddim,
    "ode": sample_ode,
    "sde": sample_sde,
}
"""The core samplers by the names the config and the command line use."""


@dataclasses.dataclass(frozen=True)
class BitsPerDim:
    """A held-out figure: bits/dim, or for `"denoising"` the unitless noise-prediction MSE.

    **Fields:** `method`; `mean`; `stderr`, the standard error of the mean over examples;
    `ci95`, the normal 95% confidence interval `mean +- 1.96 stderr`; `values`, the
    per-example figures; `solver_error`, for `"ode"` the `SolverError` of the figure
    (`None` when not checked); `seconds`, the wall time of the figure's pass over the
    examples (compiling included; the checks and a grid's tuning not).
    """

    method: str
    mean: float
    stderr: float
    ci95: tuple[float, float]
    values: np.ndarray
    solver_error: SolverError | None = None
    seconds: float = math.nan

    @property
    def unit(self) -> str:
        """`"bits/dim"`, or `"MSE"` for the denoising loss."""
        return "MSE" if self.method == "denoising" else "bits/dim"

    def __str__(self) -> str:
        low, high = self.ci95
        text = (
            f"{self.method}: {self.mean:.4f} {self.unit}, 95% CI [{low:.4f}, {high:.4f}] "
            f"over {len(self.values)} examples"
        )
        return text if self.solver_error is None else f"{text}; {self.solver_error}"

    def as_json(self) -> dict:
        """The figure as JSON-ready values (per-example values left out)."""
        out = {
            "method": self.method,
            "value": self.mean,
            "unit": self.unit,
            "stderr": self.stderr,
            "ci95": list(self.ci95),
            "num_examples": len(self.values),
            "seconds": self.seconds,
        }
        if self.solver_error is not None:
            out["solver_error"] = self.solver_error.as_json()
        return out


def _per_example(
    model: DiffusionModel,
    xs: Float[Array, " batch *shape"],
    key: PRNGKeyArray,
    method: Method,
    num_steps: int,
    repeats: int,
    tolerance: Float[Array, ""],
    grid: Float[Array, " points"] | None,
) -> Float[Array, " batch"]:
    keys = jax.random.split(key, xs.shape[0])
    if method in ("elbo", "denoising"):

        def draw(k):
            return model.nelbo(xs, key=k).total if method == "elbo" else model.denoising(xs, key=k)

        return jnp.mean(jax.vmap(draw)(jax.random.split(key, repeats)), axis=0)
    if method == "vlb":
        return jax.vmap(lambda x, k: model.dense_vlb(x, key=k, num_steps=num_steps))(xs, keys)
    return jax.vmap(lambda x, k: model.ode_bpd(x, key=k, tolerance=tolerance, grid=grid))(xs, keys)


def _step_ends(
    model: DiffusionModel,
    xs: Float[Array, " batch *shape"],
    key: PRNGKeyArray,
    tolerance: Float[Array, ""],
) -> Float[Array, "batch max_steps"]:
    keys = jax.random.split(key, xs.shape[0])
    return jax.vmap(lambda x, k: model.ode_step_ends(x, key=k, tolerance=tolerance))(xs, keys)


def _global_batches(n: int, batch_size: int) -> list[np.ndarray]:
    """Index batches of exactly `batch_size` covering `0 .. n - 1`, the last padded by
    repeating index 0 (its padded values are dropped)."""
    batches = []
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        batches.append(np.concatenate([idx, np.zeros(batch_size - len(idx), idx.dtype)]))
    return batches


def _local_slice(batch: np.ndarray) -> np.ndarray:
    per_process = len(batch) // jax.process_count()
    start = jax.process_index() * per_process
    return batch[start : start + per_process]


def _batch_size_for(mesh: Mesh, batch_size: int) -> int:
    """`batch_size` rounded up to a multiple of the mesh's devices."""
    devices = mesh.devices.size
    return devices * math.ceil(batch_size / devices)


def evaluate(
    model: DiffusionModel,
    source: AbstractImageSource,
    *,
    method: Method,
    key: PRNGKeyArray,
    mesh: Mesh,
    batch_size: int = 64,
    num_examples: int | None = None,
    num_steps: int = 1000,
    repeats: int = 4,
    tolerance: float | Literal["auto"] = 1e-5,
    solver_check: int = 64,
    reference_tolerance: float = 1e-7,
    bias_budget: float = 0.1,
    grid: bool = False,
    progress: bool = True,
) -> BitsPerDim:
    """Bits/dim of `model` on the first `num_examples` images of `source`, with its 95%
    confidence interval and, for `"ode"`, its solver error.

    The interval covers the variance of the per-example figures (examples, time and
    noise draws, the ODE's dequantisation and Hutchinson probes). What it does not cover
    is the ODE solver's bias, estimated by `SolverError`: the first `solver_check`
    examples (rounded up to whole batches) are solved again at `reference_tolerance`
    with the same draws. `tolerance="auto"` tries `ad.AUTO_TOLERANCES` on those
    examples, loosest first, and keeps the first whose bias is within `bias_budget` of
    the interval's half-width expected over all the examples (`ad.choose_tolerance`; if
    none is, the tightest, and the report says so).

    **Arguments:**

    - `model`: the trained model (usually its EMA).
    - `source`: the held-out images; every host holds all of them and evaluates its
      share of each batch, which is split over the mesh's `"data"` axis. The batches
      are streamed by `data.batch_pipeline`: grain reads the next while the devices
      work on this one.
    - `method`: `"elbo"` (the continuous-time bound, averaged over `repeats` draws of
      time and noise per example), `"vlb"` (the `num_steps`-step bound with every step
      evaluated), `"ode"` (the probability-flow ODE bound), each in bits/dim and each
      only for a process with that capability, or `"denoising"` (the noise-prediction
      MSE on the model's times, averaged as `"elbo"`), for every linear process.
    - `key`: PRNG key.
    - `mesh`: the device mesh.
    - `batch_size`: examples per global batch (rounded up to a multiple of the devices).
    - `num_examples`: how many images (default: all).
    - `num_steps`, `repeats`: see `method`.
    - `tolerance`: rtol = atol of the `"ode"` solves, or `"auto"`.
    - `solver_check`: how many examples check the solver's error (0: none).
    - `reference_tolerance`: the tighter tolerance of that check.
    - `bias_budget`: the accepted bias (plus two standard errors) as a fraction of the
      interval's half-width.
    - `grid`: solve on a fixed grid instead: for each tolerance, `ad.tuned_grid` of the
      adaptive solves of the checked examples at that tolerance (then every example
      takes the same steps, none rejected; the check measures the grid's bias against
      the adaptive reference as it does a tolerance's). Needs `solver_check > 0`.
    - `progress`: show a progress bar with examples/s and the running figure.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown evaluation method {method!r}; use one of {', '.join(METHODS)}.")
    n = len(source) if num_examples is None else min(num_examples, len(source))
    batch_size = _batch_size_for(mesh, min(batch_size, max(n, 1)))
    batches = _global_batches(n, batch_size)
    run = eqx.filter_jit(_per_example)
    ends_of = eqx.filter_jit(_step_ends)

    def stream(which: list[np.ndarray]) -> Iterator[Array]:
        """This host's share of the batches `which`, read ahead by grain's threads, on
        the mesh."""
        return (shard_batch(mesh, xs) for xs in batch_pipeline(source, which))

    def pass_over(
        which: list[np.ndarray], tol: float, points: Array | None, desc: str
    ) -> np.ndarray:
        """The per-example figures of the batches `which` (the i-th batch keyed by i, so
        a batch gets the same draws in every pass)."""
        total = min(n, len(which) * batch_size)
        bar = tqdm(total=total, desc=desc, unit="ex", disable=not progress)
        values = []
        for i, xs in enumerate(stream(which)):
            out = run(
                model,
                xs,
                jax.random.fold_in(key, i),
                method,
                num_steps,
                repeats,
                jnp.asarray(tol, jnp.float32),
                points,
            )
            values.append(np.asarray(multihost_utils.process_allgather(out, tiled=True)))
            done = np.concatenate(values)[:total]
            bar.update(len(done) - bar.n)
            bar.set_postfix_str(f"{done.mean():.4f} {'MSE' if method == 'denoising' else 'bpd'}")
        bar.close()
        return np.concatenate(values)[:total] if values else np.zeros(0)

    checked = batches[: math.ceil(min(solver_check, n) / batch_size)] if method == "ode" else []
    if grid and not checked:
        raise ValueError(
            "grid=True tunes its grid on the solver check's examples: pass "
            "solver_check > 0 and method='ode'."
        )
    checks: dict[tuple[float, bool], np.ndarray] = {}
    grids: dict[float, Array] = {}

    def grid_for(tol: float) -> Array:
        """The fixed grid tuned to the checked examples' adaptive solves at `tol`."""
        if tol not in grids:
            ends = [
                multihost_utils.process_allgather(
                    ends_of(model, xs, jax.random.fold_in(key, i), jnp.float32(tol)),
                    tiled=True,
                )
                for i, xs in enumerate(stream(checked))
            ]
            grids[tol] = tuned_grid(jnp.concatenate(ends), model.process.t_min, 1.0)
        return grids[tol]

    def check(tol: float, on_grid: bool = grid) -> np.ndarray:
        if (tol, on_grid) not in checks:
            points = grid_for(tol) if on_grid else None
            checks[tol, on_grid] = pass_over(checked, tol, points, f"check at {tol:.0e}")
        return checks[tol, on_grid]

    if tolerance != "auto" and checked and not reference_tolerance < tolerance:
        raise ValueError(
            f"reference_tolerance={reference_tolerance:g} must be tighter than "
            f"tolerance={tolerance:g}."
        )
    if tolerance == "auto":
        if not checked:
            raise ValueError(
                "tolerance='auto' chooses by the solver check: pass solver_check > 0 and "
                "method='ode'."
            )
        chosen = choose_tolerance(
            check,
            n,
            reference_tolerance=reference_tolerance,
            reference_figures=check(reference_tolerance, on_grid=False),
            bias_budget=bias_budget,
        ).tolerance
    else:
        chosen = tolerance
    points = grid_for(chosen) if grid else None
    start = time.perf_counter()
    per_example = pass_over(batches, chosen, points, f"eval {method}")
    seconds = time.perf_counter() - start
    mean, stderr, half_width = mean_interval(per_example)
    error = None
    if checked:
        error = solver_error(
            per_example,
            check(reference_tolerance, on_grid=False),
            tolerance=chosen,
            reference_tolerance=reference_tolerance,
            half_width=half_width,
            bias_budget=bias_budget,
        )
        if points is not None:
            error = dataclasses.replace(error, grid_steps=len(points) - 1)
    interval = (mean - half_width, mean + half_width)
    return BitsPerDim(method, mean, stderr, interval, per_example, error, seconds)


def generate(
    model: DiffusionModel,
    *,
    key: PRNGKeyArray,
    num: int,
    sampler: str,
    num_steps: int,
    mesh: Mesh,
    batch_size: int = 64,
    progress: bool = True,
) -> np.ndarray:
    """`num` samples of `model` as integer levels `(num, *data_shape)`.

    **Arguments:**

    - `model`: the trained model.
    - `key`: PRNG key.
    - `num`: how many samples.
    - `sampler`: a name in `SAMPLERS`.
    - `num_steps`: the sampler's steps (the adaptive `"ode"` sampler ignores it).
    - `mesh`, `batch_size`, `progress`: as `evaluate`.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; use one of {sorted(SAMPLERS)}.")
    kwargs = {} if sampler == "ode" else {"num_steps": num_steps}
    draw: Callable = functools.partial(SAMPLERS[sampler], **kwargs)
    batch_size = _batch_size_for(mesh, min(batch_size, num))

    @eqx.filter_jit
    def run(model, keys):
        return jax.vmap(lambda k: model.sample(k, draw))(keys)

    out = []
    batches = _global_batches(num, batch_size)
    for i, batch in enumerate(tqdm(batches, desc=f"sample {sampler}", disable=not progress)):
        keys = jax.random.split(jax.random.fold_in(key, i), batch_size)
        local = np.asarray(jax.random.key_data(keys))[_local_slice(np.arange(batch_size))]
        keys = jax.random.wrap_key_data(shard_batch(mesh, local))
        levels = run(model, keys)
        out.append(np.asarray(multihost_utils.process_allgather(levels, tiled=True)))
    return np.concatenate(out)[:num]
