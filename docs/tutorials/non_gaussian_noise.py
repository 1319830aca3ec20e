"""Non-Gaussian noise and sample quality: DDPM with Laplace, Uniform, Gumbel, Exponential
and Student-t noise on scikit-learn's digits, compared by FID, KID and precision/recall.

    python docs/tutorials/non_gaussian_noise.py [--out DIR] [--quick]
"""

import argparse
import pathlib
import tempfile
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optax

import adaptive_diffusion as ad
from adaptive_diffusion import metrics, train as ad_train
from adaptive_diffusion.data import DigitsSource, levels_to_centres


NUM_LEVELS = 17  # the digits' grey levels 0 .. 16
SHAPE = (1, 8, 8)


# --8<-- [start:families]
def noise_families() -> dict[str, ad.AbstractNoise]:
    """Every family has mean 0 and variance 1 exactly; only its shape differs."""
    return {
        "Gaussian": ad.GaussianNoise(),
        "Laplace": ad.LaplaceNoise(),
        "Uniform": ad.UniformNoise(),
        "Gumbel": ad.GumbelNoise(),
        "Exponential": ad.ExponentialNoise(),
        "Student-t (df=5)": ad.StudentTNoise(df=5.0),
    }


def moments(families: dict[str, ad.AbstractNoise], key, num: int) -> dict[str, np.ndarray]:
    """Sample moments of `num` draws against the moments each family states."""
    print(f"moments of {num} draws (stated skewness / excess kurtosis in brackets)")
    draws = {}
    for (name, noise), k in zip(families.items(), jax.random.split(key, len(families))):
        n = draws[name] = np.asarray(noise.sample(k, (num,)), np.float64)
        skew, kurt = np.mean(n**3), np.mean(n**4) - 3.0
        print(
            f"  {name:17s} mean {n.mean():+.4f}  var {n.var():.4f}  "
            f"skew {skew:+.3f} [{noise.skewness:+.3f}]  "
            f"kurt {kurt:+.2f} [{noise.excess_kurtosis:+.2f}]"
        )
    return draws
# --8<-- [end:families]


def plot_families(families: dict[str, ad.AbstractNoise], draws: dict, path: pathlib.Path):
    """A histogram of each family's draws with its density `exp(log_prob)` on top."""
    grid = np.linspace(-4.0, 6.0, 801)
    fig, axes = plt.subplots(2, 3, figsize=(9, 5), sharex=True, sharey=True)
    for ax, (name, noise) in zip(axes.flat, families.items()):
        ax.hist(draws[name], bins=np.linspace(-4.0, 6.0, 81), density=True, color="0.75")
        ax.plot(grid, np.exp(np.asarray(noise.log_prob(grid))), color="C3", lw=1.5)
        ax.set_title(name, fontsize=10)
        ax.set_ylim(0, 0.8)
    for ax in axes[1]:
        ax.set_xlabel("n")
    fig.suptitle("zero-mean, unit-variance noise: draws and density", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --8<-- [start:forward]
def forward_grid(families, betas, x0, steps: list[int], key) -> np.ndarray:
    """`x_i = sqrt(abar_i) x_0 + sqrt(1 - abar_i) n` for each family at DDPM steps
    `i`, shape `(families, steps, 8, 8)`. DDPM's latent `i` sits at t = (i - 1)/(T - 1)."""
    times = (jnp.asarray(steps) - 1) / (len(betas) - 1)
    keys = jax.random.split(key, len(steps))
    rows = []
    for noise in families.values():
        process = ad.DDPM(betas, noise=noise)
        x_t, _ = jax.vmap(lambda k, t: process.sample_marginal(k, x0, t))(keys, times)
        rows.append(np.asarray(x_t[:, 0]))
    return np.stack(rows)
# --8<-- [end:forward]


def plot_forward(grid: np.ndarray, names: list[str], steps: list[int], path: pathlib.Path):
    """Rows: families; columns: DDPM steps."""
    fig, axes = plt.subplots(len(names), len(steps), figsize=(1.2 * len(steps) + 1.4, 7.4))
    for r, name in enumerate(names):
        for c, step in enumerate(steps):
            ax = axes[r, c]
            ax.imshow(grid[r, c], cmap="gray", vmin=-2.0, vmax=2.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"i = {step}", fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --8<-- [start:limitation]
def show_limitation(betas, model, x) -> None:
    """Ask a non-Gaussian DDPM for a likelihood: the core refuses, saying why."""
    laplace = ad.DDPM(betas, noise=ad.LaplaceNoise())
    try:
        ad.nelbo(laplace, model, x, key=jax.random.key(0), num_levels=NUM_LEVELS)
    except ad.CapabilityError as error:
        print(f"ad.nelbo: CapabilityError: {error}")
    try:  # the probability-flow ODE needs an SDE process (AbstractSDEProcess)
        ad.sample_ode(laplace, ad.score_fn(laplace, model), jax.random.key(0), SHAPE)
    except ad.CapabilityError as error:
        print(f"ad.sample_ode: CapabilityError: {str(error).split(';')[0]}; ...")
    gaussian = ad.DDPM(betas)  # GaussianNoise() by default
    print(f"Gaussian DDPM: {gaussian.limitation()}")
    print(f"gaussian.as_vp() is {type(gaussian.as_vp()).__name__}: it has the bound")
# --8<-- [end:limitation]


# --8<-- [start:train]
def train_family(noise, betas, xs, *, steps: int, key, batch_size: int = 128):
    """An MLP noise predictor trained on DDPM's noise-regression loss with `noise`."""
    process = ad.DDPM(betas, noise=noise)
    times = ad.StepTimes(len(betas))  # DDPM's uniform steps i ~ U{1..T}
    key_net, key_data, key_steps = jax.random.split(key, 3)
    model = ad.nn.MLPDenoiser(
        SHAPE, key=key_net, fourier_exponents=ad.nn.matched_fourier_exponents(NUM_LEVELS)
    )
    schedule = optax.warmup_cosine_decay_schedule(0.0, 5e-3, min(200, steps // 4), steps)
    optimizer = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-4)
    )
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))

    def loss_fn(model, batch, key):
        def one(x, k, uniform):
            return ad.denoising_loss(process, model, x, key=k, times=times, uniform=uniform)

        return jnp.mean(ad.batch_bound(one, batch, key=key, times=times))

    @eqx.filter_jit
    def step(model, opt_state, batch, key):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    order = np.random.default_rng(np.asarray(jax.random.key_data(key_data)))
    losses = []
    for i in range(steps):
        batch = xs[order.integers(0, len(xs), batch_size)]
        model, opt_state, loss = step(model, opt_state, batch, jax.random.fold_in(key_steps, i))
        losses.append(loss)
    return process, model, np.asarray(jnp.stack(losses))
# --8<-- [end:train]


# --8<-- [start:sample]
def draw_samples(process: ad.DDPM, model, key, num: int, chunk: int = 128) -> np.ndarray:
    """DDPM's ancestral sampler on its T - 1 steps, drawing the family's own noise for
    x_T and at every step; integer levels `(num, 1, 8, 8)`."""
    score = ad.score_fn(process, model, parameterization="eps")

    @eqx.filter_jit
    def draw(score, keys):
        def one(k):
            u = ad.sample_ancestral(
                process, score, k, SHAPE, num_steps=process.num_steps - 1, denoise=True
            )
            return process.decode(u, NUM_LEVELS)

        return jax.vmap(one)(keys)

    keys = jax.random.split(key, num)
    blocks = [draw(score, keys[i : i + chunk]) for i in range(0, num, chunk)]
    return np.concatenate([np.asarray(block) for block in blocks])
# --8<-- [end:sample]


# --8<-- [start:extractor]
def feature_extractor(cache_dir: pathlib.Path, steps: int) -> metrics.ClassifierFeatures:
    """The project's default features: a small classifier trained on the train digits'
    labels, its weights cached in `cache_dir` under a fingerprint of data and options."""
    train, test = DigitsSource("train"), DigitsSource("test")
    start = time.perf_counter()
    extractor = metrics.classifier_features(train, cache_dir=cache_dir, test=test, steps=steps)
    trained = time.perf_counter() - start
    start = time.perf_counter()
    extractor = metrics.classifier_features(train, cache_dir=cache_dir, test=test, steps=steps)
    cached = time.perf_counter() - start
    print(
        f"classifier ({steps} steps): trained in {trained:.1f} s, loaded from the cache in "
        f"{cached:.1f} s; held-out accuracy {100 * extractor.accuracy:.1f}%"
    )
    return extractor
# --8<-- [end:extractor]


# --8<-- [start:metrics]
def raw_metrics(extractor, test: DigitsSource, levels: np.ndarray) -> None:
    """The three metrics on features: what `ad.train.sample_quality` wraps with spreads."""
    real = extractor(levels_to_centres(test.images, NUM_LEVELS))  # (297, 64)
    fake = extractor(levels_to_centres(levels, NUM_LEVELS))
    fid = metrics.frechet_distance(real, fake)
    kid = metrics.kernel_distance(real, fake)
    pr = metrics.precision_recall(real, fake, k=3)
    print(
        f"  raw: FID {fid:.3f}  KID {kid:.4f}  precision {pr.precision:.3f}  "
        f"recall {pr.recall:.3f}  (features {real.shape[1]}-d)"
    )


def quality_row(name: str, levels: np.ndarray, test: DigitsSource, extractor) -> dict:
    """FID with its 95% bootstrap interval, KID with its spread over 100 subsets, and
    precision/recall (k = 3), each against all 297 test digits."""
    figures = {
        method: ad_train.sample_quality(
            method, levels, test, extractor, extractor_accuracy=extractor.accuracy
        )
        for method in ad_train.QUALITY_METHODS
    }
    fid, kid, pr = figures["fid"], figures["kid"], figures["pr"]
    print(
        f"  {name:12s} FID {fid.value:6.3f} [{fid.low:.3f}, {fid.high:.3f}]  "
        f"KID x1e3 {1e3 * kid.value:7.2f} +- {1e3 * (kid.high - kid.low) / 2:6.2f}  "
        f"precision {pr.value:.3f}  recall {pr.recall:.3f}"
    )
    return {"fid": fid, "kid": kid, "pr": pr}
# --8<-- [end:metrics]


# --8<-- [start:bound]
def gaussian_bound(process: ad.DDPM, model, xs, key) -> None:
    """Only the Gaussian DDPM has a likelihood: its network, read through the VP process
    with the same marginals, has DDPM's own (T - 1)-step bound, here with every step
    evaluated (`dense_vlb`)."""
    vp, steps = process.as_vp(), process.num_steps - 1

    @eqx.filter_jit
    def dense(model, xs, keys):
        def one(x, k):
            return ad.dense_vlb(vp, model, x, key=k, num_steps=steps, num_levels=NUM_LEVELS)

        return jax.vmap(one)(xs, keys).total

    total = np.asarray(dense(model, xs, jax.random.split(key, len(xs))))
    half = 1.96 * total.std(ddof=1) / np.sqrt(len(total))
    print(
        f"Gaussian DDPM, {steps}-step bound of the first {len(total)} test digits: "
        f"{total.mean():.3f} bits/dim, 95% CI [{total.mean() - half:.3f}, "
        f"{total.mean() + half:.3f}] (uniform model: {np.log2(NUM_LEVELS):.3f})"
    )
# --8<-- [end:bound]


def plot_samples(samples: dict[str, np.ndarray], path: pathlib.Path, num: int = 36):
    """A 6 x 6 grid of samples per family, the test digits first."""
    fig, axes = plt.subplots(1, len(samples), figsize=(2.6 * len(samples), 2.9))
    side = int(np.sqrt(num))
    for ax, (name, levels) in zip(axes, samples.items()):
        tiles = levels[:num, 0].reshape(side, side, 8, 8)
        image = np.pad(tiles, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=0)
        image = image.transpose(0, 2, 1, 3).reshape(side * 10, side * 10)
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=NUM_LEVELS - 1)
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_losses(losses: dict[str, np.ndarray], path: pathlib.Path):
    """The noise-regression loss of each family (a running mean over 50 steps)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for name, curve in losses.items():
        width = min(50, len(curve))
        smooth = np.convolve(curve, np.ones(width) / width, mode="valid")
        ax.plot(np.arange(width, len(curve) + 1), smooth, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("noise-prediction MSE")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_quality(rows: dict[str, dict], path: pathlib.Path):
    """FID with its bootstrap interval, KID with its spread, precision and recall."""
    names = list(rows)
    y = np.arange(len(names))[::-1]
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.2 + 0.3 * len(names)), sharey=True)
    for ax, method, label in ((axes[0], "fid", "FID"), (axes[1], "kid", "KID x 1e3")):
        scale = 1e3 if method == "kid" else 1.0
        for yi, name in zip(y, names):
            fig_ = rows[name][method]
            ax.plot([scale * fig_.low, scale * fig_.high], [yi, yi], color="0.5", lw=3)
            ax.plot(scale * fig_.value, yi, "o", color="C0")
        ax.set_xlabel(label)
    for yi, name in zip(y, names):
        pr = rows[name]["pr"]
        axes[2].plot(pr.value, yi, "o", color="C2", label="precision" if yi == y[0] else None)
        axes[2].plot(pr.recall, yi, "s", color="C1", label="recall" if yi == y[0] else None)
    axes[2].set_xlim(0, 1)
    axes[2].legend(fontsize=8, loc="lower left")
    axes[0].set_yticks(y, names)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = pathlib.Path(__file__).resolve().parent / "non_gaussian_noise"
    parser.add_argument("--out", type=pathlib.Path, default=default_out)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--feature-cache", type=pathlib.Path, default=None,
        help="keep the feature classifier here (default: a temporary folder)",
    )
    args = parser.parse_args()
    matplotlib.use("Agg")
    args.out.mkdir(parents=True, exist_ok=True)
    steps = 40 if args.quick else 1200
    num_samples = 64 if args.quick else 400
    classifier_steps = 50 if args.quick else 300
    num_bound = 8 if args.quick else 64
    start = time.perf_counter()
    key = jax.random.key(0)

    families = noise_families()
    draws = moments(families, jax.random.fold_in(key, 1), 200_000)
    plot_families(families, draws, args.out / "families.png")

    train, test = DigitsSource("train"), DigitsSource("test")
    xs = jnp.asarray(levels_to_centres(train.images, NUM_LEVELS))
    test_xs = jnp.asarray(levels_to_centres(test.images, NUM_LEVELS))
    betas = ad.linear_betas(1000)  # DDPM's T = 1000 linear betas, 1e-4 to 0.02
    shown = [1, 50, 150, 300, 600, 1000]
    grid = forward_grid(families, betas, test_xs[0], shown, jax.random.fold_in(key, 3))
    plot_forward(grid, list(families), shown, args.out / "forward.png")
    show_limitation(betas, lambda u, t: jnp.zeros_like(u), test_xs[0])  # any model will do

    trained = ["Gaussian", "Laplace", "Exponential"][: 2 if args.quick else 3]
    samples, losses, models = {"test digits": test.images}, {}, {}
    for j, name in enumerate(trained):
        tick = time.perf_counter()
        process, model, curve = train_family(
            families[name], betas, xs, steps=steps, key=jax.random.fold_in(key, 10 + j)
        )
        train_s = time.perf_counter() - tick
        tick = time.perf_counter()
        samples[name] = draw_samples(process, model, jax.random.fold_in(key, 20 + j), num_samples)
        print(
            f"{name}: {steps} steps in {train_s:.0f} s, final loss (mean of last 100) "
            f"{curve[-100:].mean():.4f}; {num_samples} samples in "
            f"{time.perf_counter() - tick:.0f} s"
        )
        losses[name], models[name] = curve, (process, model)
    plot_losses(losses, args.out / "losses.png")
    plot_samples(samples, args.out / "samples.png")

    gaussian_bound(*models["Gaussian"], test_xs[:num_bound], jax.random.fold_in(key, 4))

    with tempfile.TemporaryDirectory() as scratch:
        cache = args.feature_cache or pathlib.Path(scratch)
        extractor = feature_extractor(cache, classifier_steps)
        floor = train.images[np.random.default_rng(0).choice(len(train), num_samples, False)]
        print(f"sample quality, {num_samples} samples against the {len(test)} test digits:")
        raw_metrics(extractor, test, floor)
        rows = {"train digits": quality_row("train digits", floor, test, extractor)}
        for name in trained:
            rows[name] = quality_row(name, samples[name], test, extractor)
    plot_quality(rows, args.out / "quality.png")
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
