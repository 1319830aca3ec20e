r"""Linear algebra on small matrices (an MDM's $(K{+}1) \times (K{+}1)$), unrolled over the
static size into a few vector operations each, with no LAPACK call.

Two reasons. Under `vmap` over times, `jnp.linalg` becomes one batched LAPACK custom
call per operation, and jaxlib 0.10.2's batched kernels on XLA:CPU queue their chunks on
the worker pool they run on and block until the chunks finish: when two such calls run
concurrently on a 2-thread pool, every worker blocks and the program hangs forever
(`scripts/xla_cpu_lapack_deadlock.py`; seen in an MDM bound). And for $n \le 8$ the
unrolled forms fuse into the surrounding elementwise code, where a custom call cannot,
on CPU and GPU alike. Each costs $n$ steps of $O(n^2)$ work: keep $n$ small.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._precision import full_precision


Matrix = Float[Array, "n n"]


@full_precision
def cholesky(m: Matrix) -> Matrix:
    r"""The lower-triangular $L$ with $L L^\top = m$, for symmetric positive semi-definite
    $m$ (only its lower triangle is read).

    Column by column, $L_{:,j} = (m_{:,j} - L_{:, <j} L_{j, <j}^\top) / \sqrt{p_j}$ with the
    pivot $p_j$ the numerator's $j$-th entry. A pivot $\le 0$ (a singular $m$, such as
    CLD's $2D = \operatorname{diag}(0, 2)$, or rounding in a near-singular covariance) gives a
    zero column, so $L L^\top = m$ still holds for the positive semi-definite part.
    """
    n = m.shape[-1]
    rows = jnp.arange(n)
    chol = jnp.zeros_like(m)
    for j in range(n):
        column = m[:, j] - chol[:, :j] @ chol[j, :j]
        pivot = column[j]
        positive = pivot > 0
        root = jnp.sqrt(jnp.where(positive, pivot, 1.0))
        column = jnp.where(positive & (rows >= j), column / root, 0.0)
        chol = chol.at[:, j].set(column)
    return chol


@full_precision
def triangular_inverse(chol: Matrix) -> Matrix:
    r"""$L^{-1}$ of a lower-triangular $L$ with a non-zero diagonal, by forward
    substitution: row $i$ of $X = L^{-1}$ is $(e_i - L_{i,<i} X_{<i}) / L_{ii}$."""
    n = chol.shape[-1]
    eye = jnp.eye(n, dtype=chol.dtype)
    inverse = jnp.zeros_like(chol)
    for i in range(n):
        row = (eye[i] - chol[i, :i] @ inverse[:i]) / chol[i, i]
        inverse = inverse.at[i].set(row)
    return inverse


@full_precision
def inverse(a: Matrix) -> Matrix:
    r"""$A^{-1}$ of a general non-singular $A$: Gauss-Jordan elimination on $[A \mid I]$
    with partial pivoting (the row swap is a permutation matrix, the identity when the
    pivot is already in place, so the elimination is differentiable and free of gathers)."""
    n = a.shape[-1]
    augmented = jnp.concatenate([a, jnp.eye(n, dtype=a.dtype)], axis=1)
    for j in range(n):
        p = j + jnp.argmax(jnp.abs(augmented[j:, j]))
        e_j, e_p = jax.nn.one_hot(j, n, dtype=a.dtype), jax.nn.one_hot(p, n, dtype=a.dtype)
        swap = (
            jnp.eye(n, dtype=a.dtype)
            - jnp.outer(e_j, e_j)
            - jnp.outer(e_p, e_p)
            + jnp.outer(e_j, e_p)
            + jnp.outer(e_p, e_j)
        )
        augmented = swap @ augmented
        pivot_row = augmented[j] / augmented[j, j]
        augmented = augmented - jnp.outer(augmented[:, j], pivot_row)
        augmented = augmented.at[j].set(pivot_row)
    return augmented[:, n:]


@full_precision
def spd_inverse(m: Matrix) -> Matrix:
    r"""$m^{-1} = L^{-\top} L^{-1}$ of a symmetric positive-definite $m = L L^\top$."""
    inv = triangular_inverse(cholesky(m))
    return inv.T @ inv
