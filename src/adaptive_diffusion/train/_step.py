"""The sharded training step: data parallel over a `jax.sharding.Mesh`, non-finite steps skipped.

The batch is split along its leading axis over the mesh's `"data"` axis; parameters,
optimizer state and EMA are replicated on every device. Under `jit`, XLA's SPMD
partitioner turns the batch mean in the loss into a per-device partial sum and an
all-reduce, so the step computes the same numbers as on one device, up to the order of
floating-point reductions.
"""

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.core import Tracer
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from .._frozen import trainable
from ._optim import ema_update
from ._state import TrainState


DATA_AXIS = "data"
"""The name of the mesh axis along which the batch is split."""


def make_mesh(data_size: int = -1, devices: Sequence[Any] | None = None) -> Mesh:
    """A one-dimensional mesh with axis `"data"`.

    **Arguments:**

    - `data_size`: how many devices the batch is split over; `-1` for all of them.
    - `devices`: the devices to use, the first `data_size` of them (default `jax.devices()`,
      which spans every host in a multi-host run).
    """
    devices = list(jax.devices() if devices is None else devices)
    size = len(devices) if data_size == -1 else data_size
    if not 1 <= size <= len(devices):
        raise ValueError(f"data_size must be -1 or in [1, {len(devices)}], got {data_size}.")
    # A "model" axis (tensor parallelism) would be added here: reshape the devices to
    # (data_size, model_size), name the axes (DATA_AXIS, "model"), and give the large
    # parameter matrices a PartitionSpec over "model" in `param_sharding` below.
    return Mesh(np.asarray(devices[:size]).reshape(size), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `"data"`, other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def param_sharding(mesh: Mesh) -> NamedSharding:
    """Replicated on every device: parameters, optimizer state, EMA, step, key.

    The place for a "model" axis: return a pytree of shardings instead, with
    `P(None, "model")` for the weight matrices to split.
    """
    return NamedSharding(mesh, P())


def shard_batch(mesh: Mesh, local_batch: PyTree) -> PyTree:
    """Put this process's part of the batch onto the mesh, split along `"data"`.

    Works the same on one host (the local batch is the global batch) and on many
    (each host passes its own slice; the global batch is their concatenation in process
    order), through `jax.make_array_from_process_local_data`.

    **Arguments:**

    - `mesh`: the mesh of [`adaptive_diffusion.train.make_mesh`][].
    - `local_batch`: a pytree of host arrays with a common leading batch axis, divisible by
      the number of this process's devices on the mesh.
    """
    sharding = batch_sharding(mesh)
    local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)

    def put(x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % local_devices:
            raise ValueError(
                f"The local batch size {x.shape[:1]} must be divisible by the {local_devices} "
                "local devices of the mesh."
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, local_batch)


def replicate(mesh: Mesh, tree: PyTree) -> PyTree:
    """Place the arrays of `tree` (e.g. a fresh `TrainState`) on every device of `mesh`.

    **Arguments:**

    - `mesh`: the mesh.
    - `tree`: any pytree; its non-array leaves are left as they are.
    """
    return eqx.filter_shard(tree, param_sharding(mesh))


_YNN_FUSIONS = "xla_cpu_experimental_ynn_fusion_type"
# XLA:CPU's default YNNPACK fusions (individual dots, convolutions and reductions; setting
# all three times the same as the default) less the convolutions.
_NO_YNN_CONVOLUTIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"


@functools.cache
def _accepts(option: str, value: str) -> bool:
    """Whether this jaxlib's CPU compiler knows `option` and takes `value` for it."""
    try:
        jax.jit(lambda x: x + 1, compiler_options={option: value}).lower(1.0).compile()
    except jax.errors.JaxRuntimeError:
        return False
    return True


def default_compiler_options(mesh: Mesh) -> dict[str, str]:
    """XLA compiler options for a train step on `mesh`'s devices: on CPU, convolutions in
    XLA's own (Eigen) kernels instead of YNNPACK's; elsewhere none.

    Recent jaxlib hands CPU matrix products, reductions and convolutions to YNNPACK. Its
    3x3 convolution's forward and backward pass is about 3 times slower than Eigen's at
    UNet sizes on the CPUs measured, which makes the VDM small config's step about 1.5
    times slower (`benchmarks/train_step.py`); its products and reductions are kept. The
    option applies to this step's compilation, not to the process, and is left out when
    `XLA_FLAGS` already sets `--xla_cpu_experimental_ynn_fusion_type` or when this jaxlib
    does not know it.
    """
    if any(device.platform != "cpu" for device in mesh.devices.flat):
        return {}
    if _YNN_FUSIONS in os.environ.get("XLA_FLAGS", "") or not _accepts(
        _YNN_FUSIONS, _NO_YNN_CONVOLUTIONS
    ):
        return {}
    return {_YNN_FUSIONS: _NO_YNN_CONVOLUTIONS}


def make_train_step(
    loss_fn: Callable[[Any, Any, PRNGKeyArray], Float[Array, ""]],
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    ema_decay: float = 0.999,
    compiler_options: Mapping[str, str] | None = None,
) -> "TrainStep":
    r"""The jitted training step `step(state, batch) -> (state, metrics)`.

    One step: a fresh key from `state.key`; the loss and its gradient with respect to
    the inexact arrays of `state.model`; the optimizer update; the EMA update. When the
    loss or the gradient norm is not finite, the update is skipped on the device (no
    host round-trip): model, optimizer state and EMA are returned unchanged, bit for bit,
    and `nonfinite_count` goes up by one; a finite step sets it back to 0. Check it on the
    host now and then with [`adaptive_diffusion.train.check_nonfinite`][].

    The input state's buffers are donated (reuse the returned state, never the one passed
    in); the batch is not, as no output could reuse its memory.

    **Arguments:**

    - `loss_fn`: `loss_fn(model, batch, key) -> scalar`, the mean loss of a batch.
    - `optimizer`: an optax transformation, e.g. [`adaptive_diffusion.train.make_optimizer`][].
    - `mesh`: the mesh; the batch should come from [`adaptive_diffusion.train.shard_batch`][]
      and the state from [`adaptive_diffusion.train.replicate`][].
    - `ema_decay`: the decay $d$ of the EMA (ignored when `state.ema` is `None`). Step $n$
      (from 0) uses $\min(d, (1 + n)/(10 + n))$, so the average forgets the initial
      weights within the first few hundred steps instead of carrying $d^n$ of them.
    - `compiler_options`: XLA options for compiling the step; `None` for
      [`adaptive_diffusion.train.default_compiler_options`][] of `mesh`, `{}` for XLA's
      defaults.

    **Returns:** the step. `metrics` holds scalars: `loss`, `grad_norm` (before
    clipping), `skipped` (bool) and `nonfinite_count`.
    """
    data = batch_sharding(mesh)
    replicated = param_sharding(mesh)

    def _step(batch: PyTree, state: TrainState) -> tuple[TrainState, dict[str, Array]]:
        state = eqx.filter_shard(state, replicated)
        batch = eqx.filter_shard(batch, data)
        key, step_key = jax.random.split(state.key)
        params, static = eqx.partition(state.model, trainable(state.model))

        def loss_of(params):
            return loss_fn(eqx.combine(params, static), batch, step_key)

        loss, grads = jax.value_and_grad(loss_of)(params)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        model = eqx.apply_updates(state.model, updates)
        decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
        ema = None if state.ema is None else ema_update(state.ema, model, decay)

        def keep_if_finite(new, old):
            # Selects, not arithmetic: a skipped step returns the old arrays exactly.
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        new_dynamic = keep_if_finite(
            eqx.filter((model, opt_state, ema), eqx.is_array),
            eqx.filter((state.model, state.opt_state, state.ema), eqx.is_array),
        )
        model, opt_state, ema = eqx.combine(
            new_dynamic, eqx.filter((model, opt_state, ema), eqx.is_array, inverse=True)
        )
        nonfinite_count = jnp.where(finite, 0, state.nonfinite_count + 1)
        new_state = TrainState(
            model=model,
            opt_state=opt_state,
            ema=ema,
            step=state.step + 1,
            key=key,
            nonfinite_count=nonfinite_count,
        )
        new_state = eqx.filter_shard(new_state, replicated)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "skipped": jnp.logical_not(finite),
            "nonfinite_count": nonfinite_count,
        }
        return new_state, metrics

    options = default_compiler_options(mesh) if compiler_options is None else compiler_options
    return TrainStep(_step, dict(options))


class TrainStep:
    """The step of `make_train_step`: `step(state, batch) -> (state, metrics)`, and
    `step.lower(state, batch)`, the step lowered for those arguments (a `jax.stages.Lowered`:
    `.as_text()` is the HLO, `.compile().memory_analysis()` XLA's memory figures).

    The step is a `jax.jit` of the state's array leaves, as a flat list, with its tree
    structure and non-array leaves (activation functions, static numbers) held as
    compile-time constants, one compilation per structure. This is what `eqx.filter_jit`
    does, less its per-call partition and recombination of the whole state, which on 2
    CPU cores cost about 6 ms of a 26 ms digits step (`benchmarks/process_overhead.py`).
    Called at the top level it compiles with `compiler_options`; called inside another
    trace (a user's `jax.jit`, or a `jax.lax.scan` over steps) it becomes part of that
    program, which JAX compiles with the outer function's options.
    """

    def __init__(
        self,
        step: Callable[[PyTree, TrainState], tuple[TrainState, dict[str, Array]]],
        compiler_options: dict[str, str],
    ):
        self._step = step
        self.compiler_options = compiler_options
        self._jitted: dict[Any, Any] = {}

    def _split(self, state: TrainState):
        leaves, treedef = jax.tree.flatten(state)
        mask = tuple(eqx.is_array(leaf) for leaf in leaves)
        arrays = [leaf for leaf, is_array in zip(leaves, mask) if is_array]
        static = tuple(leaf for leaf, is_array in zip(leaves, mask) if not is_array)
        signature = (treedef, mask, static)
        if signature not in self._jitted:
            self._jitted[signature] = self._compile(treedef, mask, static)
        return self._jitted[signature], arrays

    def _compile(self, treedef, mask: tuple[bool, ...], static: tuple[Any, ...]):
        def merge(arrays):
            arrays, others = iter(arrays), iter(static)
            return treedef.unflatten([next(arrays) if a else next(others) for a in mask])

        def on_arrays(batch, arrays):
            new_state, metrics = self._step(batch, merge(arrays))
            new_leaves, new_treedef = jax.tree.flatten(new_state)
            if new_treedef != treedef:
                raise ValueError("The training step changed the structure of its state.")
            return [leaf for leaf, a in zip(new_leaves, mask) if a], metrics

        # The state's buffers are donated: no output could reuse the batch's memory. Traced
        # inside another program (a user's jit or scan over steps) the step is part of that
        # program, which is compiled with its own options.
        top_level = jax.jit(on_arrays, donate_argnums=1, compiler_options=self.compiler_options)
        nested = jax.jit(on_arrays, donate_argnums=1)
        return top_level, nested, merge

    def _program(self, state: TrainState, batch: PyTree):
        (top_level, nested, merge), arrays = self._split(state)
        traced = any(isinstance(x, Tracer) for x in [*jax.tree.leaves(batch), *arrays])
        return nested if traced else top_level, merge, arrays

    def __call__(self, state: TrainState, batch: PyTree) -> tuple[TrainState, dict[str, Array]]:
        jitted, merge, arrays = self._program(state, batch)
        new_arrays, metrics = jitted(batch, arrays)
        return merge(new_arrays), metrics

    def lower(self, state: TrainState, batch: PyTree):
        jitted, _, arrays = self._program(state, batch)
        return jitted.lower(batch, arrays)


def check_nonfinite(state: TrainState, max_consecutive: int) -> None:
    """Raise if more than `max_consecutive` steps in a row were non-finite.

    A host-side check (it reads one scalar from the device); call it every few steps.

    **Arguments:**

    - `state`: the current state.
    - `max_consecutive`: the number of consecutive skipped steps tolerated.

    **Raises:** `FloatingPointError` naming the count and the last finite step.
    """
    count = int(state.nonfinite_count)
    if count > max_consecutive:
        last_finite = int(state.step) - count
        raise FloatingPointError(
            f"{count} consecutive non-finite steps; last finite step {last_finite}; "
            "lower the learning rate or check the data."
        )
