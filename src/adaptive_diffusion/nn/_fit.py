"""Adam on minibatches drawn with replacement: the fitting loop of the project's helpers."""

from collections.abc import Callable
from typing import TypeVar

import equinox as eqx
import jax
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray


_Model = TypeVar("_Model", bound=eqx.Module)


def fit(
    model: _Model,
    loss: Callable[[_Model, Array, Array], Array],
    inputs: np.ndarray,
    targets: np.ndarray,
    *,
    key: PRNGKeyArray,
    steps: int,
    batch_size: int,
    learning_rate: float,
) -> _Model:
    """`model` fitted by Adam (cosine decay to 0 over `steps`) on `loss(model, x, y)` of
    minibatches of rows of `inputs` and `targets`, drawn with replacement by a NumPy
    generator seeded from `key`: a deterministic function of its arguments on a given
    backend."""
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, opt_state, x, y):
        grads = eqx.filter_grad(loss)(model, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state

    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    for _ in range(steps):
        index = rng.integers(0, len(inputs), batch_size)
        model, opt_state = step(model, opt_state, inputs[index], targets[index])
    return model
