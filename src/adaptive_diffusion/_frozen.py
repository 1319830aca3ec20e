"""Frozen parts of a model: arrays that training reads and never updates."""

from typing import Generic, TypeVar

import equinox as eqx
import jax
from jaxtyping import PyTree


_Module = TypeVar("_Module")


class Frozen(eqx.Module, Generic[_Module]):
    """`module` held fixed: `trainable(tree)` marks its arrays as not trained, and its
    `value` is `module` behind `jax.lax.stop_gradient`, so no gradient reaches it
    through any other training loop either.

    **Fields:** `module`, any pytree (a pretrained autoencoder, say).
    """

    module: _Module

    @property
    def value(self) -> _Module:
        """`module` with its arrays behind `jax.lax.stop_gradient`."""
        arrays, rest = eqx.partition(self.module, eqx.is_inexact_array)
        return eqx.combine(jax.tree.map(jax.lax.stop_gradient, arrays), rest)


def trainable(tree: PyTree) -> PyTree:
    """The filter spec of the arrays training updates: `True` at every floating-point
    array of `tree` outside a `Frozen`, for `eqx.partition(tree, trainable(tree))`."""

    def spec(node):
        if isinstance(node, Frozen):
            return jax.tree.map(lambda _: False, node)
        return eqx.is_inexact_array(node)

    return jax.tree.map(spec, tree, is_leaf=lambda node: isinstance(node, Frozen))
