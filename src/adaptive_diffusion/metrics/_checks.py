"""Validation of feature sets at the metrics' boundary.

The public metrics take `ArrayLike` without a jaxtyping shape, so that a wrong shape
reaches these checks and gets an error naming the fix, rather than a type-check error.
"""

import numpy as np
from jaxtyping import ArrayLike


def as_features(name: str, feats: ArrayLike, *, min_rows: int = 2) -> np.ndarray:
    """`feats` as a float64 `(N, d)` array, or a `ValueError` that names what is wrong."""
    array = np.asarray(feats, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be a (N, d) array of features, one row per image; got shape "
            f"{array.shape}. Flatten each image's features, e.g. feats.reshape(len(feats), -1)."
        )
    if array.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows; got {array.shape[0]}.")
    if not np.all(np.isfinite(array)):
        bad = int(np.sum(~np.all(np.isfinite(array), axis=1)))
        raise ValueError(
            f"{name} has {bad} row(s) with NaN or infinite features: check the samples "
            "and the feature extractor."
        )
    return array


def as_feature_pair(
    feats_a: ArrayLike, feats_b: ArrayLike, *, min_rows: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Both feature sets validated, with the same feature dimension."""
    a = as_features("feats_a", feats_a, min_rows=min_rows)
    b = as_features("feats_b", feats_b, min_rows=min_rows)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"feats_a has {a.shape[1]} features per row and feats_b {b.shape[1]}: "
            "compute both with the same feature extractor."
        )
    return a, b
