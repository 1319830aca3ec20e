"""Matrix products at full float32 precision whatever `jax.default_matmul_precision` says."""

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import jax


_P = ParamSpec("_P")
_R = TypeVar("_R")


def full_precision(f: Callable[_P, _R]) -> Callable[_P, _R]:
    """`f` traced under `jax.default_matmul_precision("float32")`: every product inside
    runs in full float32, where a global "bfloat16" or "tensorfloat32" default (or a
    GPU's TF32 default) would round its operands to 8 or 11 significant bits.

    For the process's own small-matrix algebra (an MDM's matrix exponential, which
    doubles its rounding errors at each of its squarings, and the Cholesky factors and
    inverses of its covariances): under emulated bfloat16 rounding a digits MDM's
    training loss at gamma_min = -20 went from 33.68 to 361 bits/dim (346 with only the
    exponential and the factorisations pinned; 33.68 with every method of the process
    pinned). The network the process calls is left to the default.
    """

    @functools.wraps(f)
    def wrapped(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with jax.default_matmul_precision("float32"):
            return f(*args, **kwargs)

    return wrapped
