"""Gaussian-mixture data: exact marginals and scores under any linear Gaussian process."""

import contextlib
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax._src.lax import lax as lax_internal
from jaxtyping import Array, Float, PRNGKeyArray

import adaptive_diffusion as ad
from adaptive_diffusion._processes import _small_linalg as small_linalg


# Batched LAPACK calls (every time and component at once) can deadlock XLA:CPU's 2-thread
# pool on jaxlib 0.10.2 (scripts/xla_cpu_lapack_deadlock.py): small covariances use the
# library's unrolled, LAPACK-free factorisation, large ones LAPACK.
_SMALL = 16


def _cholesky(cov: Array) -> Array:
    return small_linalg.cholesky(cov) if cov.shape[-1] <= _SMALL else jnp.linalg.cholesky(cov)


def _solve_lower(chol: Array, b: Array) -> Array:
    if chol.shape[-1] <= _SMALL:
        return small_linalg.triangular_inverse(chol) @ b
    return jax.scipy.linalg.solve_triangular(chol, b, lower=True)


class GaussianMixture(eqx.Module):
    """`sum_k w_k N(means[k], covs[k])` over flattened vectors of `shape`."""

    log_weights: Float[Array, " k"]
    means: Float[Array, "k d"]
    covs: Float[Array, "k d d"]
    shape: tuple[int, ...] = eqx.field(static=True)

    def log_prob(self, x: Array) -> Array:
        x = x.reshape(-1)

        def component(mean, cov):
            chol = _cholesky(cov)
            z = _solve_lower(chol, x - mean)
            logdet = 2 * jnp.sum(jnp.log(jnp.diag(chol)))
            return -0.5 * (z @ z + logdet + x.size * math.log(2 * math.pi))

        return jax.nn.logsumexp(self.log_weights + jax.vmap(component)(self.means, self.covs))

    def score(self, x: Array) -> Array:
        return jax.grad(self.log_prob)(x)

    def sample(self, key: PRNGKeyArray) -> Array:
        kc, kn = jax.random.split(key)
        k = jax.random.categorical(kc, self.log_weights)
        chol = _cholesky(self.covs[k])
        z = jax.random.normal(kn, (self.means.shape[1],))
        return (self.means[k] + chol @ z).reshape(self.shape)

    def mean_and_cov(self) -> tuple[Array, Array]:
        w = jnp.exp(self.log_weights)
        mean = w @ self.means
        centred = self.means - mean[None]
        cov = jnp.einsum("k,kij->ij", w, self.covs) + jnp.einsum("k,ki,kj->ij", w, centred, centred)
        return mean, cov


def marginal(
    process: ad.AbstractProcess, data: GaussianMixture, t, constant=None
) -> GaussianMixture:
    """The exact marginal `p_t` of the mixture under a linear Gaussian process, for the
    diffused part of the state (given its `constant` part, e.g. MuLAN's latent).

    `u_t = A_t u_0 + L_t eps` is read off the process itself by differentiating
    `perturb` (exact, since it is linear), so every component stays Gaussian with mean
    `A mu_k` and covariance `A S_k A^T + L L^T`.
    """
    zeros = jnp.zeros(data.shape)

    def flat(u0, eps):
        state = process.combine(u0.reshape(data.shape), constant)
        diffused, _ = process.partition(process.perturb(state, t, eps.reshape(data.shape)))
        return diffused.reshape(-1)

    a = jax.jacfwd(flat, argnums=0)(zeros.reshape(-1), zeros.reshape(-1))
    lin = jax.jacfwd(flat, argnums=1)(zeros.reshape(-1), zeros.reshape(-1))
    means = data.means @ a.T
    covs = jnp.einsum("ij,kjl,ml->kim", a, data.covs, a) + (lin @ lin.T)[None]
    return GaussianMixture(data.log_weights, means, covs, data.shape)


def mixture_score(process: ad.AbstractProcess, data: GaussianMixture):
    """The exact score `grad log p_t(u)` of the mixture's marginals, as `score(u, t)`: of
    the diffused part, given the state's constant part."""

    def score(u, t):
        diffused, constant = process.partition(u)
        mixture = marginal(process, data, t, constant)
        return mixture.score(diffused.reshape(-1)).reshape(diffused.shape)

    return score


def random_mixture(
    key: PRNGKeyArray, shape: tuple[int, ...], num_components: int = 3, scale: float = 0.3
) -> GaussianMixture:
    """A well-separated mixture with random full covariances, inside roughly [-1, 1]."""
    d = math.prod(shape)
    kw, km, kc = jax.random.split(key, 3)
    log_weights = jax.nn.log_softmax(jax.random.normal(kw, (num_components,)))
    means = jax.random.uniform(km, (num_components, d), minval=-0.6, maxval=0.6)
    factors = scale * jax.random.normal(kc, (num_components, d, d)) / math.sqrt(d)
    covs = factors @ jnp.swapaxes(factors, 1, 2) + 0.01 * jnp.eye(d)[None]
    return GaussianMixture(log_weights, means, covs, shape)


_REDUCED_MANTISSA = {"bfloat16": 7, "tensorfloat32": 10}


@contextlib.contextmanager
def emulated_matmul_precision(name: str):
    """Run under `jax.default_matmul_precision(name)` ("bfloat16" or "tensorfloat32") with
    its effect on a GPU emulated here, where XLA:CPU computes every float32 dot exactly:
    while it is active, each `dot_general` traced with the default precision (none given,
    and no "highest"/"float32" default set inside) gets its float32 operands rounded to
    the name's mantissa (7 bits for bfloat16, 10 for TF32), as the GPU's tensor cores do.
    Functions must be traced inside (fresh closures: a cached trace is not re-traced).
    """
    exact = lax_internal.dot_general
    bits = _REDUCED_MANTISSA[name]

    def rounded(x):
        if x.dtype != jnp.float32:
            return x
        return jax.lax.reduce_precision(x, exponent_bits=8, mantissa_bits=bits)

    def dot_general(lhs, rhs, dimension_numbers, precision=None, *args, **kwargs):
        default = jax.config.jax_default_matmul_precision
        if precision is None and default not in ("highest", "float32", "HIGHEST"):
            lhs, rhs = rounded(jnp.asarray(lhs)), rounded(jnp.asarray(rhs))
        return exact(lhs, rhs, dimension_numbers, precision, *args, **kwargs)

    lax_internal.dot_general = dot_general
    try:
        with jax.default_matmul_precision(name):
            yield
    finally:
        lax_internal.dot_general = exact
