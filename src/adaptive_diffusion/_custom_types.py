"""Shared jaxtyping aliases."""

from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree, Shaped


Time = Float[ArrayLike, ""]
"""A scalar time in `[0, 1]`."""

Scalar = Float[Array, ""]
"""A scalar JAX array."""

Data = Float[Array, "*shape"]
"""One example (no batch axis), channels first: `(C, H, W)` or `(D,)`."""

State = PyTree[Float[Array, "..."]]
"""A process state: the data itself (VP-type processes), one array `(K + 1, *data)`
(multivariate diffusions), or a pytree holding a diffused array beside parts that are
constant in time (MuLAN's `LatentState(x, z, schedule)`)."""

Noise = Float[Array, "*noise"]
"""An array shaped like the diffused part of a state: white noise, a network's noise
prediction, a score, a drift."""

Gamma = Shaped[Array, "*gamma"]
"""A log-SNR value `gamma = -log SNR`: a scalar, or one per data dimension."""

Key = PRNGKeyArray

__all__ = ["Data", "Gamma", "Key", "Noise", "Scalar", "State", "Time"]
