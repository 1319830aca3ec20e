r"""Improved precision and recall on k-nearest-neighbour manifolds (Kynkäänniemi et al. 2019)."""

from typing import NamedTuple

import numpy as np
from jaxtyping import ArrayLike

from ._checks import as_feature_pair


_CHUNK = 1024


class PrecisionRecall(NamedTuple):
    """Fractions in [0, 1]: `precision` of the generated rows inside the real manifold,
    `recall` of the real rows inside the generated one."""

    precision: float
    recall: float


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    squared = np.sum(x**2, axis=1)[:, None] + np.sum(y**2, axis=1)[None, :] - 2.0 * x @ y.T
    return np.clip(squared, 0.0, None)


def _radii(x: np.ndarray, k: int) -> np.ndarray:
    """Each row's squared distance to its k-th nearest other row."""
    radii = np.empty(len(x))
    for start in range(0, len(x), _CHUNK):
        block = _squared_distances(x[start : start + _CHUNK], x)
        # Index k of the sorted row is the k-th neighbour: index 0 is the row itself.
        radii[start : start + _CHUNK] = np.partition(block, k, axis=1)[:, k]
    return radii


def _coverage(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray) -> float:
    """The fraction of `queries` inside some ball (centre a manifold row, its radius)."""
    inside = np.empty(len(queries), dtype=bool)
    for start in range(0, len(queries), _CHUNK):
        block = _squared_distances(queries[start : start + _CHUNK], manifold)
        inside[start : start + _CHUNK] = np.any(block <= radii[None, :], axis=1)
    return float(inside.mean())


def precision_recall(real: ArrayLike, fake: ArrayLike, *, k: int = 3) -> PrecisionRecall:
    r"""Improved precision and recall (Kynkäänniemi et al. 2019). Each set's manifold is the
    union of balls around its rows, each with the radius to that row's `k`-th nearest
    neighbour in the same set; precision is the fraction of `fake` rows inside the real
    manifold (fidelity), recall the fraction of `real` rows inside the generated one
    (coverage). Distances are Euclidean, in float64, in blocks of 1024 rows, so memory is
    $O(1024 \cdot \max(N, M))$.

    Both fractions depend on $N$, $M$ and $k$ (the paper's $k = 3$ at $N = M$ = 50,000):
    compare only at equal sizes.

    **Arguments:**

    - `real`, `fake`: `(N, d)` and `(M, d)` features from the same extractor, each with
      more than `k` rows.
    - `k`: the neighbour that sets each ball's radius, at least 1.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1; got {k!r}.")
    a, b = as_feature_pair(real, fake, min_rows=k + 1)
    return PrecisionRecall(
        precision=_coverage(a, _radii(a, k), b), recall=_coverage(b, _radii(b, k), a)
    )
