"""The optimizer (AdamW, clipping, warmup then cosine decay) and the EMA of the weights."""

import equinox as eqx
import jax
import optax
from jaxtyping import PyTree

from ._config import OptimizerConfig


def make_schedule(config: OptimizerConfig, steps: int) -> optax.Schedule:
    r"""The learning rate: linear warmup from 0 to `lr`, then cosine decay to 0 at `steps`
    (or constant, with `lr_decay` off).

    $\eta(s) = \eta_{\max} s / W$ for $s < W$, then
    $\eta(s) = \tfrac12 \eta_{\max} (1 + \cos(\pi (s - W) / (S - W)))$ up to $S$, and 0 after.

    **Arguments:**

    - `config`: the optimizer section of the config (`lr`, `warmup_steps`).
    - `steps`: the total number of steps $S$; the warmup $W$ is capped at $S - 1$.
    """
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}.")
    warmup = max(0, min(config.warmup_steps, steps - 1))
    if not config.lr_decay:
        if warmup == 0:
            return optax.constant_schedule(config.lr)
        return optax.linear_schedule(0.0, config.lr, warmup)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.lr, warmup_steps=warmup, decay_steps=steps
    )


_KERNEL_LAYERS = (eqx.nn.Linear, eqx.nn.Conv, eqx.nn.ConvTranspose, eqx.nn.Embedding)


def _decay_mask(params: PyTree) -> PyTree:
    """Weight decay on the `weight` of linear, convolution and embedding layers only.

    Decided by the layer, not by the array's rank: blocks stacked for `jax.lax.scan`
    carry 2-d biases and norm scales, and a learned process's matrices (an MDM's `G`,
    a schedule's weights) are not network kernels; none of them is decayed.
    """

    def mask(node: PyTree) -> PyTree:
        if isinstance(node, _KERNEL_LAYERS) and node.weight is not None:  # None: frozen
            nothing = jax.tree.map(lambda _: False, node)
            return eqx.tree_at(lambda layer: layer.weight, nothing, True)
        return jax.tree.map(lambda _: False, node)

    return jax.tree.map(mask, params, is_leaf=lambda node: isinstance(node, _KERNEL_LAYERS))


def make_optimizer(config: OptimizerConfig, steps: int) -> optax.GradientTransformation:
    """Gradient clipping by global norm, then AdamW on the schedule of `make_schedule`.

    Use it on the trained arrays of a model, `eqx.filter(model, ad.trainable(model))`.

    **Arguments:**

    - `config`: the optimizer section of the config.
    - `steps`: the total number of steps, the length of the cosine decay.
    """
    return optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.adamw(
            make_schedule(config, steps),
            b1=config.b1,
            b2=config.b2,
            weight_decay=config.weight_decay,
            mask=_decay_mask,
        ),
    )


def ema_update(ema: PyTree, params: PyTree, decay: float | jax.Array) -> PyTree:
    r"""One step of the exponential moving average, $e \leftarrow d\,e + (1 - d)\,p$.

    Pure: a tree map over the floating-point arrays; every other leaf (integer arrays,
    and the static parts of an Equinox module) is taken from `params`.

    **Arguments:**

    - `ema`: the running average, a pytree with the structure of `params`.
    - `params`: the current parameters (a model, or its filtered arrays).
    - `decay`: $d \in [0, 1]$; 0 copies `params`, 1 keeps `ema`.

    **Returns:** the new average, with the structure of `params`.
    """

    def average(e, p):
        if eqx.is_inexact_array(p):
            return (decay * e + (1 - decay) * p).astype(p.dtype)
        return p

    return jax.tree.map(average, ema, params)
