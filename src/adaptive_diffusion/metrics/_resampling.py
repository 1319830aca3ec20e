"""Spreads of a two-sample metric: the bootstrap and random subsets."""

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from jaxtyping import ArrayLike

from ._checks import as_feature_pair


Metric = Callable[[np.ndarray, np.ndarray], float]


class Interval(NamedTuple):
    """A metric on the full sets with a percentile bootstrap interval, and the set sizes
    it was computed at (FID and KID depend on them)."""

    estimate: float
    low: float
    high: float
    level: float
    num_a: int
    num_b: int


class Spread(NamedTuple):
    """The mean and standard deviation of a metric over random subsets of `subset_size`
    rows of each set."""

    mean: float
    std: float
    subset_size: int
    num_subsets: int


def bootstrap(
    metric: Metric,
    feats_a: ArrayLike,
    feats_b: ArrayLike,
    *,
    num_resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    r"""The metric on the full sets and its percentile bootstrap interval: both sets are
    resampled with replacement `num_resamples` times, and the interval holds the central
    `level` of the resampled values (Efron & Tibshirani 1993, ch. 13).

    The interval is the estimate's spread at these sizes, not a correction of its bias:
    FID's upward bias at $N$ = 1000 stays in both ends. Meant for statistics of the rows'
    moments such as `frechet_distance`; a resample's duplicated rows bias U-statistics
    (`kernel_distance`) and nearest-neighbour radii (`precision_recall`): use `subsets`.

    **Arguments:**

    - `metric`: a function of two `(N, d)` float64 feature arrays returning a float.
    - `feats_a`, `feats_b`: the features.
    - `num_resamples`: bootstrap draws, at least 10.
    - `level`: the interval's coverage, in (0, 1).
    - `seed`: the resampling's NumPy seed.
    """
    if num_resamples < 10:
        raise ValueError(f"num_resamples must be at least 10; got {num_resamples}.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level}.")
    a, b = as_feature_pair(feats_a, feats_b)
    rng = np.random.default_rng(seed)
    values = [
        metric(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))])
        for _ in range(num_resamples)
    ]
    low, high = np.quantile(values, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return Interval(float(metric(a, b)), float(low), float(high), level, len(a), len(b))


def subsets(
    metric: Metric,
    feats_a: ArrayLike,
    feats_b: ArrayLike,
    *,
    subset_size: int,
    num_subsets: int = 100,
    seed: int = 0,
) -> Spread:
    """The metric's mean and standard deviation over `num_subsets` draws of `subset_size`
    rows of each set without replacement (KID's customary 100 subsets of 1000 rows,
    Bińkowski et al. 2018), so no subset repeats a row.

    **Arguments:**

    - `metric`: a function of two `(N, d)` float64 feature arrays returning a float.
    - `feats_a`, `feats_b`: the features, each with at least `subset_size` rows.
    - `subset_size`: rows per subset, at least 2.
    - `num_subsets`: subsets drawn, at least 2.
    - `seed`: the draws' NumPy seed.
    """
    a, b = as_feature_pair(feats_a, feats_b)
    if not 2 <= subset_size <= min(len(a), len(b)):
        raise ValueError(
            f"subset_size must be in [2, {min(len(a), len(b))}] (the smaller set's rows); "
            f"got {subset_size}."
        )
    if num_subsets < 2:
        raise ValueError(f"num_subsets must be at least 2; got {num_subsets}.")
    rng = np.random.default_rng(seed)
    values = [
        metric(
            a[rng.choice(len(a), subset_size, replace=False)],
            b[rng.choice(len(b), subset_size, replace=False)],
        )
        for _ in range(num_subsets)
    ]
    return Spread(float(np.mean(values)), float(np.std(values, ddof=1)), subset_size, num_subsets)
