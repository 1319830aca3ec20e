r"""The Fréchet distance between Gaussians fitted to two feature sets (FID's formula)."""

import numpy as np
from jaxtyping import ArrayLike, Float

from ._checks import as_feature_pair


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric PSD matrix, by its eigendecomposition
    (rounding's negative eigenvalues clipped to 0)."""
    values, vectors = np.linalg.eigh(cov)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def gaussian_frechet_distance(
    mean_a: Float[ArrayLike, " d"],
    cov_a: Float[ArrayLike, "d d"],
    mean_b: Float[ArrayLike, " d"],
    cov_b: Float[ArrayLike, "d d"],
) -> float:
    r"""The squared 2-Wasserstein (Fréchet) distance between $N(m_a, S_a)$ and $N(m_b, S_b)$:
    $$\lVert m_a - m_b \rVert^2 + \operatorname{tr}\big(S_a + S_b - 2 (S_a S_b)^{1/2}\big)$$
    (Dowson & Landau 1982), in squared feature units, computed in float64.

    $\operatorname{tr}(S_a S_b)^{1/2}$ is the sum of the square roots of the eigenvalues of
    the symmetric PSD $S_a^{1/2} S_b S_a^{1/2}$, which has the same spectrum as $S_a S_b$:
    two symmetric eigendecompositions, stable for singular covariances (fewer samples than
    features), where the general `scipy.linalg.sqrtm` of the non-symmetric $S_a S_b$ can
    return complex parts and needs an ad hoc jitter.
    """
    m_a, m_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
    s_a, s_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    root_a = _psd_sqrt(s_a)
    cross = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    trace_cross = np.sum(np.sqrt(np.clip(cross, 0.0, None)))
    value = np.sum((m_a - m_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2.0 * trace_cross
    return float(max(value, 0.0))


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    r"""FID's formula on any features: the Fréchet distance between the Gaussians with the
    sample means and (unbiased, $1/(N-1)$) covariances of the two sets
    (Heusel et al. 2017), in squared feature units; float64 throughout.

    **Bias.** The estimate is biased upward, by about
    $\operatorname{tr}(S_a)/N_a + \operatorname{tr}(S_b)/N_b$ for the mean term alone plus
    a larger covariance term, which falls only like $1/N$: two samples of one distribution
    score well above 0 at $N$ = 1000 (Chong & Forsyth 2020). Compare FIDs only at equal
    sample sizes and report $N$; `bootstrap` gives the estimate's spread, not its bias.

    **Arguments:**

    - `feats_a`, `feats_b`: `(N, d)` and `(M, d)` features, e.g. of generated and of
      held-out images, from the same extractor; each with at least 2 rows.
    """
    a, b = as_feature_pair(feats_a, feats_b)
    return gaussian_frechet_distance(
        a.mean(axis=0), np.cov(a, rowvar=False), b.mean(axis=0), np.cov(b, rowvar=False)
    )
