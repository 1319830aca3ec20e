r"""Noise covariances $\Sigma$ as linear operators on one example.

A covariance never forms a dense matrix outside `as_matrix` (for small shapes and
tests): processes only apply $\Sigma^{1/2}$, $\Sigma^{-1/2}$ and read
$\log\det\Sigma$ and the marginal variances $\operatorname{diag}\Sigma$.
"""

import abc
import math

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._custom_types import Data


class AbstractCovariance(eqx.Module):
    r"""A symmetric positive-definite covariance $\Sigma$ over data of one shape."""

    @abc.abstractmethod
    def sqrt_apply(self, x: Data) -> Data:
        r"""$\Sigma^{1/2} x$, with $\Sigma^{1/2}$ the symmetric square root."""

    @abc.abstractmethod
    def inv_sqrt_apply(self, x: Data) -> Data:
        r"""$\Sigma^{-1/2} x$."""

    @abc.abstractmethod
    def logdet(self) -> Float[Array, ""]:
        r"""$\log \det \Sigma$, in nats."""

    @abc.abstractmethod
    def variance(self) -> Float[Array, "..."]:
        r"""The marginal variances $\operatorname{diag} \Sigma$, broadcastable to the data."""

    @abc.abstractmethod
    def as_matrix(self) -> Float[Array, "n n"]:
        r"""$\Sigma$ as a dense `(N, N)` matrix over the flattened data (small shapes only)."""


class IdentityCovariance(AbstractCovariance):
    r"""$\Sigma = I$: white noise, the covariance of `VP` and `DiagonalVP`.

    **Arguments:** `shape`: the data shape; needed only by `as_matrix`.
    """

    shape: tuple[int, ...] | None = None

    def sqrt_apply(self, x: Data) -> Data:
        return x

    def inv_sqrt_apply(self, x: Data) -> Data:
        return x

    def logdet(self) -> Float[Array, ""]:
        return jnp.zeros(())

    def variance(self) -> Float[Array, ""]:
        return jnp.ones(())

    def as_matrix(self) -> Float[Array, "n n"]:
        if self.shape is None:
            raise ValueError(
                "IdentityCovariance.as_matrix needs the data shape: build it as "
                "IdentityCovariance(shape=x.shape)."
            )
        return jnp.eye(math.prod(self.shape))
