r"""The kernel inception distance: an unbiased estimate of the squared MMD."""

import numpy as np
from jaxtyping import ArrayLike

from ._checks import as_feature_pair


def _cubic_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """$k(x, y) = (x \\cdot y / d + 1)^3$ for every pair of rows."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kernel_distance(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    r"""KID (Bińkowski et al. 2018): the unbiased U-statistic estimate of the squared maximum
    mean discrepancy between the two feature distributions with the cubic polynomial kernel
    $k(x, y) = (x \cdot y / d + 1)^3$,
    $$\frac{1}{N(N-1)}\sum_{i \ne j} k(a_i, a_j) + \frac{1}{M(M-1)}\sum_{i \ne j} k(b_i, b_j)
    - \frac{2}{NM}\sum_{i, j} k(a_i, b_j),$$
    in float64. Its expectation is the true $\mathrm{MMD}^2$ at every sample size, so it is
    0 on average for two samples of one distribution and can come out negative; the
    V-statistic that keeps the diagonal $i = j$ (NGLDM's) is biased upward by about
    $\mathbb E\,k(a, a)/N + \mathbb E\,k(b, b)/M$. `bootstrap` gives its spread.

    **Arguments:**

    - `feats_a`, `feats_b`: `(N, d)` and `(M, d)` features from the same extractor, each
      with at least 2 rows.
    """
    a, b = as_feature_pair(feats_a, feats_b)
    n, m = len(a), len(b)
    k_aa, k_bb = _cubic_kernel(a, a), _cubic_kernel(b, b)
    within_a = (k_aa.sum() - np.trace(k_aa)) / (n * (n - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
    return float(within_a + within_b - 2.0 * _cubic_kernel(a, b).mean())
