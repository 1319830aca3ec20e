"""Sample-quality metrics on features of shape `(N, d)` from any extractor."""

from ._extractor import (
    ClassifierFeatures as ClassifierFeatures,
    FeatureExtractor as FeatureExtractor,
    accuracy as accuracy,
    classifier_features as classifier_features,
    train_classifier as train_classifier,
)
from ._frechet import (
    frechet_distance as frechet_distance,
    gaussian_frechet_distance as gaussian_frechet_distance,
)
from ._kernel import kernel_distance as kernel_distance
from ._precision_recall import (
    PrecisionRecall as PrecisionRecall,
    precision_recall as precision_recall,
)
from ._resampling import (
    Interval as Interval,
    Spread as Spread,
    bootstrap as bootstrap,
    subsets as subsets,
)


__all__ = [
    "ClassifierFeatures",
    "FeatureExtractor",
    "accuracy",
    "classifier_features",
    "train_classifier",
    "frechet_distance",
    "gaussian_frechet_distance",
    "kernel_distance",
    "PrecisionRecall",
    "precision_recall",
    "Interval",
    "Spread",
    "bootstrap",
    "subsets",
]
