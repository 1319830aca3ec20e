"""Sample-quality metrics against closed forms and constructed cases."""

import numpy as np
import pytest
import scipy.linalg

from adaptive_diffusion import metrics


def _with_moments(rng, n, mean, cov):
    """n rows whose sample mean and (1/(n-1)) covariance are exactly `mean` and `cov`."""
    z = rng.normal(size=(n, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return mean + z @ np.linalg.cholesky(cov).T


def _random_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_gaussian_frechet_commuting_closed_form():
    """Diagonal covariances commute: the distance is |m_a - m_b|^2 + sum (sqrt a - sqrt b)^2."""
    rng = np.random.default_rng(0)
    m_a, m_b = rng.normal(size=6), rng.normal(size=6)
    v_a, v_b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    expected = np.sum((m_a - m_b) ** 2) + np.sum((np.sqrt(v_a) - np.sqrt(v_b)) ** 2)
    got = metrics.gaussian_frechet_distance(m_a, np.diag(v_a), m_b, np.diag(v_b))
    # float64 eigendecompositions of 6x6 matrices: ~1e-15 relative.
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_gaussian_frechet_general_against_sqrtm():
    """Non-commuting covariances: against the textbook formula with scipy's sqrtm, which
    is accurate on these well-conditioned matrices."""
    rng = np.random.default_rng(1)
    d = 10
    m_a, m_b = rng.normal(size=d), rng.normal(size=d)
    s_a, s_b = _random_cov(rng, d), _random_cov(rng, d)
    cross = np.real(scipy.linalg.sqrtm(s_a @ s_b))
    expected = np.sum((m_a - m_b) ** 2) + np.trace(s_a + s_b - 2 * cross)
    got = metrics.gaussian_frechet_distance(m_a, s_a, m_b, s_b)
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_frechet_distance_of_features_with_known_moments():
    """Features built with exact sample moments give the Gaussians' closed-form distance."""
    rng = np.random.default_rng(2)
    d = 5
    m_a, m_b = rng.normal(size=d), rng.normal(size=d)
    s_a, s_b = _random_cov(rng, d), _random_cov(rng, d)
    a, b = _with_moments(rng, 400, m_a, s_a), _with_moments(rng, 300, m_b, s_b)
    expected = metrics.gaussian_frechet_distance(m_a, s_a, m_b, s_b)
    assert expected > 1.0
    # Only the whitening's float64 rounding separates the sample moments from the targets.
    np.testing.assert_allclose(metrics.frechet_distance(a, b), expected, rtol=1e-10)


def test_frechet_distance_singular_covariance_is_stable():
    """Fewer rows than features (rank-deficient covariances): finite, and 0 for one set."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(20, 64)).astype(np.float32)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    value = metrics.frechet_distance(a, rng.normal(size=(30, 64)))
    assert np.isfinite(value) and value > 0


def _v_statistic(a, b):
    """The biased estimate that keeps the i = j terms (NGLDM's)."""
    k = lambda x, y: (x @ y.T / x.shape[1] + 1.0) ** 3  # noqa: E731
    return k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean()


def test_kernel_distance_matches_the_double_sum():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)) + 0.3
    k = lambda x, y: (x @ y / 3 + 1.0) ** 3  # noqa: E731
    within_a = sum(k(a[i], a[j]) for i in range(7) for j in range(7) if i != j) / 42
    within_b = sum(k(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / 20
    cross = sum(k(a[i], b[j]) for i in range(7) for j in range(5)) / 35
    np.testing.assert_allclose(metrics.kernel_distance(a, b), within_a + within_b - 2 * cross)


def test_kernel_distance_is_unbiased():
    """Over 2000 pairs of 16-row samples of one distribution the mean KID is 0 within 3.5
    standard errors (a false failure has probability ~5e-4); the V-statistic's bias at this
    size is many standard errors, so the check can fail."""
    rng = np.random.default_rng(5)
    kid, biased = [], []
    for _ in range(2000):
        a, b = rng.normal(size=(16, 8)), rng.normal(size=(16, 8))
        kid.append(metrics.kernel_distance(a, b))
        biased.append(_v_statistic(a, b))
    standard_error = np.std(kid, ddof=1) / np.sqrt(len(kid))
    assert abs(np.mean(kid)) < 3.5 * standard_error
    assert np.mean(biased) > 10 * standard_error


def test_kernel_distance_separates_shifted_distributions():
    """A shift of 0.5 in every one of 8 dimensions: the subsets' mean KID is several
    spreads above 0, while the unshifted pair's is within its spread of 0."""
    rng = np.random.default_rng(6)
    a, same, shifted = (rng.normal(size=(1000, 8)) for _ in range(3))
    far = metrics.subsets(
        metrics.kernel_distance, a, shifted + 0.5, subset_size=200, num_subsets=20
    )
    near = metrics.subsets(metrics.kernel_distance, a, same, subset_size=200, num_subsets=20)
    assert far.mean > 4 * far.std
    assert abs(near.mean) < 2 * near.std
    assert far.mean > 20 * abs(near.mean)


def test_precision_recall_constructed_cases():
    rng = np.random.default_rng(7)
    real = rng.normal(size=(300, 4))
    assert metrics.precision_recall(real, real) == (1.0, 1.0)
    # Disjoint: the fake set sits 100 standard deviations away.
    assert metrics.precision_recall(real, rng.normal(size=(300, 4)) + 100.0) == (0.0, 0.0)
    # Mode dropping: real has two far clusters, fake covers one of them faithfully.
    two_modes = np.concatenate([real, rng.normal(size=(300, 4)) + 50.0])
    one_mode = rng.normal(size=(600, 4))
    precision, recall = metrics.precision_recall(two_modes, one_mode)
    # 300 real rows in 4-D with k = 3 cover about 90% of fresh draws of their own law.
    assert precision > 0.85
    assert 0.45 < recall <= 0.5


def test_bootstrap_interval_covers_the_estimate():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(200, 3)), rng.normal(size=(200, 3)) + 0.5
    interval = metrics.bootstrap(metrics.frechet_distance, a, b, num_resamples=50)
    assert interval.low < interval.estimate < interval.high
    assert (interval.num_a, interval.num_b, interval.level) == (200, 200, 0.95)
    # The true distance 0.75 (the mean shift) lies inside this bias-dominated interval's range.
    assert interval.low < 0.75 + 0.3 and interval.high > 0.75 - 0.3


@pytest.mark.parametrize(
    "a,b,match",
    [
        (np.zeros((4, 2, 2)), np.zeros((4, 4)), "must be a \\(N, d\\) array"),
        (np.zeros((4, 3)), np.zeros((4, 4)), "same feature extractor"),
        (np.full((4, 3), np.nan), np.zeros((4, 3)), "NaN"),
        (np.zeros((1, 3)), np.zeros((4, 3)), "at least \\d rows"),
    ],
)
def test_bad_features_are_named(a, b, match):
    for metric in (metrics.frechet_distance, metrics.kernel_distance, metrics.precision_recall):
        with pytest.raises(ValueError, match=match):
            metric(a, b)


def test_bad_options_are_named():
    a = np.zeros((10, 2))
    with pytest.raises(ValueError, match="k must be"):
        metrics.precision_recall(a, a, k=0)
    with pytest.raises(ValueError, match="subset_size"):
        metrics.subsets(metrics.kernel_distance, a, a, subset_size=11)
    with pytest.raises(ValueError, match="level"):
        metrics.bootstrap(metrics.frechet_distance, a, a, level=1.5)


@pytest.fixture(scope="module")
def digits():
    from adaptive_diffusion.data import DigitsSource

    return DigitsSource("train"), DigitsSource("test")


def _centres(source):
    from adaptive_diffusion.data import levels_to_centres

    return levels_to_centres(source.images, source.num_levels)


@pytest.mark.slow
def test_classifier_features_train_cache_and_separate(digits, tmp_path):
    """300 steps already classify held-out digits well; the cache returns the same
    weights without retraining, a second training elsewhere gives the same weights
    (deterministic), and the features tell digits from shuffled-pixel digits."""
    train, test = digits
    first = metrics.classifier_features(train, cache_dir=tmp_path / "a", test=test, steps=300)
    assert first.accuracy is not None and first.accuracy > 0.9
    (cached,) = (tmp_path / "a").iterdir()
    stamp = cached.stat().st_mtime_ns
    again = metrics.classifier_features(train, cache_dir=tmp_path / "a", test=test, steps=300)
    assert cached.stat().st_mtime_ns == stamp
    fresh = metrics.classifier_features(train, cache_dir=tmp_path / "b", steps=300)
    images = _centres(test)
    features = first(images)
    assert features.shape == (len(test), 64) and features.dtype == np.float64
    # Scaled to mean square 1 on the train split, the scale KID's cubic kernel assumes.
    assert np.mean(first(_centres(train)) ** 2) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_array_equal(again(images), features)
    np.testing.assert_array_equal(fresh(images), features)
    # Shuffling each digit's pixels keeps its grey-level histogram, not its shape.
    rng = np.random.default_rng(9)
    flat = images.reshape(len(images), -1)
    shuffled = np.stack([row[rng.permutation(64)] for row in flat]).reshape(images.shape)
    reference = first(_centres(train))
    assert metrics.frechet_distance(reference, first(shuffled)) > 5 * metrics.frechet_distance(
        reference, features
    )


def test_classifier_features_errors(digits, tmp_path):
    from adaptive_diffusion.data import ArraySource

    train, _ = digits
    unlabelled = ArraySource(train.images, train.num_levels)
    with pytest.raises(ValueError, match="no labels.*your own extractor"):
        metrics.classifier_features(unlabelled, cache_dir=tmp_path)
    metrics.classifier_features(train, cache_dir=tmp_path, steps=2)
    (cached,) = tmp_path.iterdir()
    cached.write_bytes(b"not weights")
    with pytest.raises(ValueError, match="cannot be read.*delete it"):
        metrics.classifier_features(train, cache_dir=tmp_path, steps=2)
