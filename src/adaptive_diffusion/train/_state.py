"""The state of a training run, one pytree: model, optimizer state, EMA, step, key."""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Int, PRNGKeyArray, PyTree

from .._frozen import trainable


class TrainState(eqx.Module):
    """Everything a training step reads and writes.

    **Fields:**

    - `model`: the model being trained (an Equinox module; its floating-point arrays
      outside an `ad.Frozen` are trained).
    - `opt_state`: the optimizer's state for `eqx.filter(model, ad.trainable(model))`
      (every floating-point array outside an `ad.Frozen`).
    - `ema`: the exponential moving average of `model` (same structure), or `None`.
    - `step`: the number of steps taken, skipped ones included.
    - `key`: the PRNG key of the next step.
    - `nonfinite_count`: how many of the latest steps in a row had a non-finite loss or
      gradient (and were skipped); 0 after a finite step.
    """

    model: PyTree
    opt_state: optax.OptState
    ema: PyTree | None
    step: Int[Array, ""]
    key: PRNGKeyArray
    nonfinite_count: Int[Array, ""]


def init_state(
    model: PyTree,
    optimizer: optax.GradientTransformation,
    key: PRNGKeyArray,
    ema: bool = True,
) -> TrainState:
    """The state at step 0.

    **Arguments:**

    - `model`: the initial model.
    - `optimizer`: the optimizer, e.g. from [`adaptive_diffusion.train.make_optimizer`][].
    - `key`: the PRNG key of the run's steps (time, noise sampling inside the loss).
    - `ema`: whether to keep an exponential moving average of the model (starting at the
      model itself).
    """
    return TrainState(
        model=model,
        opt_state=optimizer.init(eqx.filter(model, trainable(model))),
        ema=_copy(model) if ema else None,
        step=jnp.zeros((), jnp.int32),
        key=key,
        nonfinite_count=jnp.zeros((), jnp.int32),
    )


def _copy(tree: PyTree) -> PyTree:
    """Fresh buffers for the arrays of `tree`, so that donating the state never donates one
    buffer twice (the model and its EMA start equal)."""
    return jax.tree.map(lambda x: jnp.copy(x) if eqx.is_array(x) else x, tree)
