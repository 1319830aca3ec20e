"""Held-out bits/dim with a confidence interval, and batches of samples, over a mesh."""

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Literal, get_args

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jaxtyping import Array, Float, PRNGKeyArray
from tqdm.auto import tqdm

from .._sampling import sample_ancestral, sample_ddim, sample_ode, sample_sde
from ..data import AbstractImageSource, levels_to_centres
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
    per-example figures.
    """

    method: str
    mean: float
    stderr: float
    ci95: tuple[float, float]
    values: np.ndarray

    @property
    def unit(self) -> str:
        """`"bits/dim"`, or `"MSE"` for the denoising loss."""
        return "MSE" if self.method == "denoising" else "bits/dim"

    def __str__(self) -> str:
        low, high = self.ci95
        return (
            f"{self.method}: {self.mean:.4f} {self.unit}, 95% CI [{low:.4f}, {high:.4f}] "
            f"over {len(self.values)} examples"
        )


def _per_example(
    model: DiffusionModel,
    xs: Float[Array, " batch *shape"],
    key: PRNGKeyArray,
    method: Method,
    num_steps: int,
    repeats: int,
) -> Float[Array, " batch"]:
    keys = jax.random.split(key, xs.shape[0])
    if method in ("elbo", "denoising"):

        def draw(k):
            return model.nelbo(xs, key=k).total if method == "elbo" else model.denoising(xs, key=k)

        return jnp.mean(jax.vmap(draw)(jax.random.split(key, repeats)), axis=0)
    if method == "vlb":
        return jax.vmap(lambda x, k: model.dense_vlb(x, key=k, num_steps=num_steps))(xs, keys)
    return jax.vmap(lambda x, k: model.ode_bpd(x, key=k))(xs, keys)


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
    progress: bool = True,
) -> BitsPerDim:
    """Bits/dim of `model` on the first `num_examples` images of `source`.

    **Arguments:**

    - `model`: the trained model (usually its EMA).
    - `source`: the held-out images; every host holds all of them and evaluates its
      share of each batch, which is split over the mesh's `"data"` axis.
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
    - `progress`: show a progress bar.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown evaluation method {method!r}; use one of {', '.join(METHODS)}.")
    n = len(source) if num_examples is None else min(num_examples, len(source))
    batch_size = _batch_size_for(mesh, min(batch_size, max(n, 1)))
    run = eqx.filter_jit(_per_example)
    values = []
    batches = _global_batches(n, batch_size)
    for i, batch in enumerate(tqdm(batches, desc=f"eval {method}", disable=not progress)):
        xs = shard_batch(mesh, levels_to_centres(source[_local_slice(batch)], source.num_levels))
        out = run(model, xs, jax.random.fold_in(key, i), method, num_steps, repeats)
        values.append(np.asarray(multihost_utils.process_allgather(out, tiled=True)))
    per_example = np.concatenate(values)[:n] if values else np.zeros(0)
    mean = float(per_example.mean())
    stderr = float(per_example.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    interval = (mean - 1.96 * stderr, mean + 1.96 * stderr)
    return BitsPerDim(method, mean, stderr, interval, per_example)


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
