r"""The grain input pipeline: shuffled, sharded per host, batched, mapped to $[-1, 1]$."""

import functools
from collections.abc import Sequence

import equinox as eqx
import grain
import jax
import numpy as np
from absl import flags
from jaxtyping import Bool, Float32, Int, Integer

from ._base import AbstractImageSource


def levels_to_centres(
    levels: Integer[np.ndarray, "*shape"], num_levels: int
) -> Float32[np.ndarray, "*shape"]:
    r"""The bin centres $-1 + (2k + 1)/L$ of integer levels $k$, in float32.

    The numpy twin of `adaptive_diffusion._discrete.from_levels`: the same float32
    operations, correctly rounded here (XLA may be one ulp off, dividing by multiplying
    with the reciprocal).

    **Arguments:**

    - `levels`: integer levels $k \in \{0, \dots, L - 1\}$.
    - `num_levels`: the number of levels $L$.
    """
    k = levels.astype(np.float32)
    return np.float32(-1.0) + (np.float32(2.0) * k + np.float32(1.0)) / np.float32(num_levels)


_FOREVER = 2**62 // 2**20
"""The number of batches of an endless pipeline (a lazy range: nothing is allocated)."""


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> Int[np.ndarray, " n"]:
    return np.random.default_rng([seed, epoch]).permutation(n)


class _GlobalBatchIndices(eqx.Module):
    r"""Global batch `s` of the stream as source indices (and flip coins), vectorised.

    Stream position $i$ is example `perm_e[i mod N]` of epoch $e = \lfloor i / N \rfloor$,
    with `perm_e` drawn from `(shuffle_seed, e)` (the identity without shuffling); the
    coins of batch $s$ are drawn from `(flip_seed, s)`. One numpy call per batch rather
    than one Python call per example: the index stream never limits the loader.
    """

    num_examples: int
    batch_size: int
    length: int | None
    shuffle_seed: int | None
    flip_seed: int | None

    def __call__(
        self, s: int
    ) -> Int[np.ndarray, " b"] | tuple[Int[np.ndarray, " b"], Bool[np.ndarray, " b"]]:
        start = s * self.batch_size
        stop = start + self.batch_size
        if self.length is not None:
            stop = min(stop, self.length)
        epoch, within = np.divmod(np.arange(start, stop), self.num_examples)
        if self.shuffle_seed is None:
            indices = within
        else:
            indices = np.empty_like(within)
            for e in np.unique(epoch):
                here = epoch == e
                perm = _permutation(self.shuffle_seed, int(e), self.num_examples)
                indices[here] = perm[within[here]]
        if self.flip_seed is None:
            return indices
        coins = np.random.default_rng([self.flip_seed, s]).random(len(indices)) < 0.5
        return indices, coins


class _LoadBatch(eqx.Module):
    """Takes this host's block of a global batch of source indices, gathers the images,
    flips the marked ones and maps them to bin centres."""

    source: AbstractImageSource
    process_index: int
    process_count: int

    def __call__(
        self,
        batch: Int[np.ndarray, " global"]
        | tuple[Int[np.ndarray, " global"], Bool[np.ndarray, " global"]],
    ) -> Float32[np.ndarray, "local c h w"]:
        indices, flips = batch if isinstance(batch, tuple) else (batch, None)
        size = len(indices) // self.process_count
        block = slice(self.process_index * size, (self.process_index + 1) * size)
        images = self.source[indices[block]]
        if flips is not None:
            flips = flips[block]
            images[flips] = images[flips][..., ::-1]
        return levels_to_centres(images, self.source.num_levels)


def image_pipeline(
    source: AbstractImageSource,
    *,
    global_batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    drop_remainder: bool = False,
    flip: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
    read_threads: int = 1,
    prefetch_batches: int = 4,
    worker_count: int = 0,
) -> grain.IterDataset:
    r"""This host's batches of `source`, as float32 bin centres `(B / P, C, H, W)`.

    The pipeline orders the $N$ examples into one global stream, the same on every
    host: a permutation drawn from `seed`, a new one each epoch (or the source order
    with `shuffle=False`), repeated `num_epochs` times (forever by default). Global
    batch $s$ is positions $[sB, (s + 1)B)$ of the stream; host $p$ of $P$ reads and
    yields only its block $[sB + pB/P, sB + (p + 1)B/P)$ of it, $B / P$ images per batch,
    so the hosts' batches at step $s$, concatenated in process order (as
    `jax.make_array_from_process_local_data` does), are global batch $s$ in order: a
    run sees the same batches, example for example, on any number of hosts. Each image
    is optionally flipped left-right with probability 1/2 (a coin per stream position
    drawn from `seed`), and its levels $k$ are mapped to $-1 + (2k + 1)/L$,
    $L$ = `source.num_levels`.

    Iterate with `it = iter(pipeline)`. `it.get_state()` is a small dict recording the
    position in the stream; `it.set_state(state)` on a fresh iterator of the same
    pipeline resumes exactly there (grain's orbax handler,
    `grain.checkpoint.CheckpointSave(it)`, stores it with a training checkpoint).

    A finite pass (`num_epochs` given, e.g. 1 for evaluation) ends with a partial
    global batch of $r = NE \bmod B$ examples unless `drop_remainder=True`; for every
    host to yield the same number of batches, $r$ must then be divisible by $P$.

    **Arguments:**

    - `source`: the images, e.g. `DigitsSource()` or `CIFAR10Source(directory)`.
    - `global_batch_size`: $B$, the batch size summed over hosts; divisible by $P$.
    - `seed`: seed of the shuffle and of the flips, in $[0, 2^{32})$.
    - `shuffle`: whether to permute the examples (each epoch differently).
    - `num_epochs`: passes over the data; `None` (training) repeats forever, 1 is a
      single pass (evaluation).
    - `drop_remainder`: whether a finite pass drops its last, partial global batch.
    - `flip`: random horizontal flips (off by default: they change the data
      distribution whose likelihood is measured).
    - `process_index`, `process_count`: this host $p$ and the number of hosts $P$;
      default to `jax.process_index()` and `jax.process_count()`.
    - `read_threads`: threads preparing batches ahead in this process (0 reads on
      demand in the calling thread).
    - `prefetch_batches`: how many batches those threads keep ready.
    - `worker_count`: if positive, batches are prepared in that many separate processes
      (`grain` multiprocessing; each holds a copy of the source) instead.

    **Returns:** a `grain.IterDataset` of float32 arrays `(B / P, C, H, W)`.
    """
    if process_count is None:
        process_count = jax.process_count()
    if process_index is None:
        process_index = jax.process_index()
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index must lie in [0, process_count), got {process_index} and "
            f"process_count {process_count}."
        )
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} must be a positive multiple of the "
            f"number of processes {process_count}, each of which loads an equal share."
        )
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must lie in [0, 2**32), got {seed}.")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be positive or None (forever), got {num_epochs}.")

    shuffle_seed, flip_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    length = None if num_epochs is None else num_epochs * len(source)
    if length is not None:
        remainder = length % global_batch_size
        if drop_remainder:
            if length < global_batch_size:
                raise ValueError(
                    f"{num_epochs} epoch(s) of {len(source)} examples make no full batch "
                    f"of {global_batch_size}; lower global_batch_size or keep the remainder."
                )
            length -= remainder
        elif remainder % process_count:
            raise ValueError(
                f"The last global batch of {num_epochs} epoch(s) of {len(source)} examples "
                f"holds {remainder} examples, which {process_count} processes cannot share "
                "equally; pass drop_remainder=True or choose another global_batch_size."
            )
    indices = _GlobalBatchIndices(
        num_examples=len(source),
        batch_size=global_batch_size,
        length=length,
        shuffle_seed=shuffle_seed if shuffle else None,
        flip_seed=flip_seed if flip else None,
    )
    num_batches = _FOREVER if length is None else -(-length // global_batch_size)
    ds = grain.MapDataset.range(num_batches).map(indices)
    ds = ds.map(_LoadBatch(source, process_index, process_count))
    read_options = grain.ReadOptions(
        num_threads=read_threads, prefetch_buffer_size=prefetch_batches
    )
    iter_ds = ds.to_iter_dataset(read_options)
    if worker_count > 0:
        # grain 0.2.18 reads an absl flag in its worker set-up and fails unless flags were
        # parsed (google/grain#1355, fixed upstream by #1362): outside `absl.app`, parse
        # none from the command line, keeping every flag at its default.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter_ds


def batch_pipeline(
    source: AbstractImageSource,
    batches: Sequence[Int[np.ndarray, " global"]],
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    read_threads: int = 1,
    prefetch_batches: int = 4,
) -> grain.IterDataset:
    r"""This host's share of given global batches of `source`, in order, as float32 bin
    centres `(B / P, C, H, W)`, read ahead by grain's threads.

    The held-out counterpart of `image_pipeline`: the caller chooses the batches (say,
    the first $n$ examples in order, the last batch padded to a full one, as
    `train.evaluate` does), and each is loaded as `image_pipeline` loads its own (host $p$
    of $P$ takes block $p$ of every global batch, whose size $B$ must be divisible by
    $P$), while the device works on the one before.

    **Arguments:**

    - `source`: the images.
    - `batches`: global batches of source indices.
    - `process_index`, `process_count`, `read_threads`, `prefetch_batches`: as
      `image_pipeline`.

    **Returns:** a `grain.IterDataset` with one array per batch.
    """
    process_count = jax.process_count() if process_count is None else process_count
    process_index = jax.process_index() if process_index is None else process_index
    if any(len(batch) % process_count for batch in batches):
        raise ValueError(
            f"Every global batch must split equally over the {process_count} processes; "
            f"got sizes {sorted({len(batch) for batch in batches})}."
        )
    ds = grain.MapDataset.source(list(batches)).map(
        _LoadBatch(source, process_index, process_count)
    )
    read_options = grain.ReadOptions(
        num_threads=read_threads, prefetch_buffer_size=prefetch_batches
    )
    return ds.to_iter_dataset(read_options)
