r"""Feature extractors: the classifier the project trains on a data set's own labels.

No pretrained weights can be downloaded here, so the default features of the embedded
data sets come from a small [`adaptive_diffusion.nn.Classifier`][] trained on the train
split's labels (the digit; a photo patch's source region), deterministically from a seed,
and cached. Any other extractor, e.g. an Inception network the user already has, is a
function `images -> features` of the same signature (`FeatureExtractor`).
"""

import hashlib
import json
import pathlib
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..data import AbstractImageSource, levels_to_centres
from ..nn import Classifier
from ..nn._fit import fit


FeatureExtractor = Callable[[Float[np.ndarray, "n c h w"]], Float[np.ndarray, "n d"]]
"""`extractor(images) -> features`: images `(N, C, H, W)` on the grid of bin centres in
$[-1, 1]$ (channels first, like the data pipeline's), features `(N, d)`."""

_BATCH = 512


class ClassifierFeatures(eqx.Module):
    r"""A trained classifier's penultimate layer, divided by `scale`, as a `FeatureExtractor`.

    **Fields:** `classifier`; `scale`, the root mean square of the raw features over the
    train split, so its features have mean square 1 per entry: KID's cubic kernel
    $(x \cdot y / d + 1)^3$ assumes features of that order (Inception's are), and raw
    features a hundred times larger make it a sixth-power statistic whose estimate is
    dominated by a few rows; `accuracy`, its accuracy on the held-out split it was
    checked on (`None` if none was given), a figure to report beside the metrics:
    features of a classifier that cannot tell the classes apart measure little.
    """

    classifier: Classifier
    scale: float = eqx.field(static=True)
    accuracy: float | None = eqx.field(static=True)

    def __call__(self, images: Float[np.ndarray, "n c h w"]) -> Float[np.ndarray, "n d"]:
        features = _batched(_features, self.classifier, images)
        return np.asarray(features, np.float64) / self.scale


@eqx.filter_jit
def _features(classifier: Classifier, x: Float[Array, "b c h w"]) -> Float[Array, "b d"]:
    return jax.vmap(classifier.features)(x)


@eqx.filter_jit
def _logits(classifier: Classifier, x: Float[Array, "b c h w"]) -> Float[Array, "b k"]:
    return jax.vmap(classifier)(x)


def _batched(
    fn: Callable[[Classifier, Array], Array], classifier: Classifier, images
) -> np.ndarray:
    """`fn(classifier, block)` on blocks of `_BATCH` rows, concatenated (bounded memory)."""
    images = np.asarray(images, np.float32)
    blocks = range(0, len(images), _BATCH)
    return np.concatenate(
        [np.asarray(fn(classifier, jnp.asarray(images[i : i + _BATCH]))) for i in blocks]
    )


def train_classifier(
    images: Float[np.ndarray, "n c h w"],
    labels: Int[np.ndarray, " n"],
    *,
    key: PRNGKeyArray,
    steps: int = 1500,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
) -> Classifier:
    r"""A `Classifier` fitted by Adam on the cross-entropy of `labels`, minibatches drawn
    with replacement from a NumPy generator seeded from `key`; the result is a
    deterministic function of its arguments on a given backend.

    **Arguments:**

    - `images`: `(N, C, H, W)` in $[-1, 1]$; `labels`: `(N,)` integers from 0.
    - `key`: PRNG key of the weights and of the batch order.
    - `steps`, `batch_size`, `learning_rate`: Adam's schedule (cosine decay to 0).
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int64)
    key_init, key_order = jax.random.split(key)
    model = Classifier(images.shape[1:], int(labels.max()) + 1, key=key_init)

    def loss(model, x, y):
        logits = jax.vmap(model)(x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    return fit(
        model,
        loss,
        images,
        labels,
        key=key_order,
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
    )


def accuracy(classifier: Classifier, images: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of `images` (in $[-1, 1]$) whose highest logit is their label."""
    logits = _batched(_logits, classifier, images)
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


def _fingerprint(source: AbstractImageSource, **options) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(source.images).tobytes())
    digest.update(np.ascontiguousarray(source.labels).tobytes())
    digest.update(json.dumps(options, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def classifier_features(
    train: AbstractImageSource,
    *,
    cache_dir: str | pathlib.Path,
    test: AbstractImageSource | None = None,
    seed: int = 0,
    steps: int = 1500,
) -> ClassifierFeatures:
    """The default extractor of a labelled data set: a `Classifier` trained on `train`'s
    images and labels (`train_classifier`, key `seed`), its accuracy measured on `test`,
    its features scaled to mean square 1 on `train` (see `ClassifierFeatures`).

    The weights are cached in `cache_dir` under a name fingerprinting the images, the
    labels and the options, so the same data give the same file and any change retrains;
    a cache file that cannot be read is an error naming it (delete it to retrain).

    **Arguments:**

    - `train`: a source with `labels` (digits, photo patches).
    - `cache_dir`: where the weights are kept (a run's folder, or a shared cache).
    - `test`: a held-out source with labels, for the reported accuracy.
    - `seed`, `steps`: see `train_classifier`.
    """
    if train.labels is None:
        raise ValueError(
            f"{type(train).__name__} has no labels, so there is no default feature extractor "
            "for it: pass your own extractor (a function of (N, C, H, W) images in [-1, 1] "
            "returning (N, d) features, e.g. an Inception network you have)."
        )
    name = _fingerprint(train, seed=seed, steps=steps, version=1)
    path = pathlib.Path(cache_dir) / f"classifier-{type(train).__name__}-{name}.eqx"
    images = levels_to_centres(train.images, train.num_levels)
    if path.exists():
        like = Classifier(train.shape, int(train.labels.max()) + 1, key=jax.random.key(0))
        try:
            classifier = eqx.tree_deserialise_leaves(path, like)
        except Exception as e:
            raise ValueError(
                f"The cached feature extractor {str(path)!r} cannot be read "
                f"({type(e).__name__}: {e}); delete it to retrain."
            ) from e
    else:
        classifier = train_classifier(images, train.labels, key=jax.random.key(seed), steps=steps)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        eqx.tree_serialise_leaves(partial, classifier)
        partial.replace(path)
    held_out = None
    if test is not None and test.labels is not None:
        held_out = accuracy(
            classifier, levels_to_centres(test.images, test.num_levels), test.labels
        )
    raw = np.asarray(_batched(_features, classifier, images), np.float64)
    return ClassifierFeatures(classifier, float(np.sqrt(np.mean(raw**2))), held_out)
