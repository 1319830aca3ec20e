"""Sample quality of a trained model: FID, KID and precision/recall against the test split."""

import dataclasses
import pathlib

import jax
import numpy as np
from jax.sharding import Mesh

from .. import metrics
from ..data import AbstractImageSource, levels_to_centres
from ._evaluate import generate
from ._model import DiffusionModel


QUALITY_METHODS: tuple[str, ...] = ("fid", "kid", "pr")
"""The sample-quality figures `sample_quality` computes."""


@dataclasses.dataclass(frozen=True)
class SampleQuality:
    """One sample-quality figure of `num_samples` samples against `num_reference` test images.

    **Fields:** `method` (`"fid"`, `"kid"` or `"pr"`); `value` (FID; KID, the unbiased
    MMD$^2$; or precision); `low`, `high`: FID's 95% bootstrap interval, KID's mean
    $\\pm$ one standard deviation over subsets, or for `"pr"` both `None`; `recall` (`"pr"`
    only); `detail`, how the spread was measured; `num_samples`, `num_reference`;
    `extractor_accuracy`, the default extractor's held-out accuracy (`None` for a user's).
    """

    method: str
    value: float
    low: float | None
    high: float | None
    recall: float | None
    detail: str
    num_samples: int
    num_reference: int
    extractor_accuracy: float | None

    def __str__(self) -> str:
        sizes = f"{self.num_samples} samples vs {self.num_reference} test images"
        if self.method == "pr":
            figure = f"precision {self.value:.4f}, recall {self.recall:.4f}"
        else:
            figure = f"{self.method} {self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"
        accuracy = (
            ""
            if self.extractor_accuracy is None
            else f"; features of the project's classifier, held-out accuracy "
            f"{100 * self.extractor_accuracy:.1f}%"
        )
        return f"{figure} ({self.detail}; {sizes}{accuracy})"

    def as_json(self) -> dict:
        """The figure as a JSON-ready dict."""
        return dataclasses.asdict(self)


def sample_quality(
    method: str,
    samples: np.ndarray,
    reference: AbstractImageSource,
    extractor: metrics.FeatureExtractor,
    *,
    extractor_accuracy: float | None = None,
    seed: int = 0,
) -> SampleQuality:
    r"""FID, KID or precision/recall of `samples` against the images of `reference`.

    FID and KID depend on the set sizes: FID is biased upward at small $N$ (the estimated
    means alone add $\operatorname{tr}\Sigma/N$ per set, the covariance term more, so at
    $N = 1000$ or fewer two samples of one distribution score well above 0), so the sizes
    travel with every figure; compare FIDs only at equal sizes. KID's estimate is unbiased
    at any size. The spreads: FID's percentile bootstrap (`metrics.bootstrap`, 200
    resamples), KID's standard deviation over 100 subsets of half the smaller set
    (`metrics.subsets`; resampling with replacement would bias it), precision and recall
    with $k = 3$ neighbours.

    **Arguments:**

    - `method`: a name in `QUALITY_METHODS`.
    - `samples`: integer levels `(N, *shape)`, as `generate` returns them.
    - `reference`: the held-out images (all of them are used).
    - `extractor`: `images -> (N, d)` features, images as bin centres in $[-1, 1]$.
    - `extractor_accuracy`: reported beside the figure.
    - `seed`: the resampling's seed.
    """
    if method not in QUALITY_METHODS:
        raise ValueError(
            f"Unknown sample-quality method {method!r}; use one of {', '.join(QUALITY_METHODS)}."
        )
    if samples.shape[1:] != reference.shape:
        raise ValueError(
            f"The samples have shape {samples.shape[1:]} but the reference images "
            f"{reference.shape}: evaluate a model of the data set it was trained on."
        )
    fake = extractor(levels_to_centres(samples, reference.num_levels))
    real = extractor(levels_to_centres(reference.images, reference.num_levels))
    if method == "fid":
        interval = metrics.bootstrap(metrics.frechet_distance, real, fake, seed=seed)
        value, low, high, recall = interval.estimate, interval.low, interval.high, None
        detail = "95% bootstrap interval; FID is biased upward at small sizes"
    elif method == "kid":
        size = max(2, min(1000, len(fake) // 2, len(real) // 2))
        spread = metrics.subsets(metrics.kernel_distance, real, fake, subset_size=size, seed=seed)
        value, recall = metrics.kernel_distance(real, fake), None
        low, high = spread.mean - spread.std, spread.mean + spread.std
        detail = f"mean +- std over {spread.num_subsets} subsets of {size}"
    else:
        result = metrics.precision_recall(real, fake)
        value, low, high, recall = result.precision, None, None, result.recall
        detail = "k = 3 nearest neighbours"
    return SampleQuality(
        method, value, low, high, recall, detail, len(fake), len(real), extractor_accuracy
    )


def cached_samples(
    model: DiffusionModel,
    path: pathlib.Path,
    *,
    seed: int,
    num: int,
    sampler: str,
    num_steps: int,
    mesh: Mesh,
    batch_size: int = 64,
    progress: bool = True,
) -> np.ndarray:
    """`generate(model, ...)`'s samples kept in the `.npy` file `path`, so FID, KID and
    precision/recall of one checkpoint share one draw; a file that cannot be read, or of
    the wrong shape, is an error naming it (delete it to draw again)."""
    want = (num, *model.data_shape)
    if path.exists():
        try:
            levels = np.load(path)
        except Exception as e:
            raise ValueError(
                f"The cached samples {str(path)!r} cannot be read ({type(e).__name__}: {e}); "
                "delete the file to draw them again."
            ) from e
        if levels.shape != want:
            raise ValueError(
                f"The cached samples {str(path)!r} have shape {levels.shape}, not {want}; "
                "delete the file to draw them again."
            )
        return levels
    levels = generate(
        model,
        key=jax.random.key(seed),
        num=num,
        sampler=sampler,
        num_steps=num_steps,
        mesh=mesh,
        batch_size=batch_size,
        progress=progress,
    )
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as f:
            np.save(f, levels)
        partial.replace(path)
    return levels
