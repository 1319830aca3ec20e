"""Shared jaxtyping aliases."""

from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Shaped


Time = Float[ArrayLike, ""]
"""A scalar time in `[0, 1]`."""

Scalar = Float[Array, ""]
"""A scalar JAX array."""

Data = Float[Array, "*shape"]
"""One example (no batch axis), channels first: `(C, H, W)` or `(D,)`."""

State = Float[Array, "*state"]
"""A process state: data for VP-type processes, `(K + 1, *data)` for multivariate ones."""

Gamma = Shaped[Array, "*gamma"]
"""A log-SNR value `gamma = -log SNR`: a scalar, or one per data dimension."""

Key = PRNGKeyArray

__all__ = ["Data", "Gamma", "Key", "Scalar", "State", "Time"]
