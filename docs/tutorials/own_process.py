"""Writing your own process: a sub-VP family on the library's scaled-Gaussian base, three
methods long, then every core function on it, checked against closed forms.

    python docs/tutorials/own_process.py [--out DIR] [--quick]
"""

import argparse
import math
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from jaxtyping import Array, Float

import adaptive_diffusion as ad


SHAPE = (2,)  # two-dimensional data, so that the densities can be drawn
NUM_LEVELS = 64  # the data live on the 64 x 64 grid of bin centres in [-1, 1]^2
BLOBS = ((-0.45, -0.3), (0.4, -0.35), (0.05, 0.5))  # where the data's three blobs sit


# --8<-- [start:process]
class SubVP(ad.AbstractScaledGaussianProcess):
    r"""Song et al.'s sub-VP process, $x_t = a_t x_0 + s_t\varepsilon$ with
    $s_t = 1 - a_t^2$, parameterised like every process here by $\gamma = \log(s^2/a^2)$.

    With $q = a^2$, $(1 - q)^2 = e^\gamma q$, whose root in $(0, 1]$ is
    $q = 2 / (2 + e^\gamma + e^{\gamma/2}\sqrt{4 + e^\gamma})$. Its total variance for
    unit-variance data, $a^2 + s^2 = 1 - q + q^2$, stays below VP's 1: "sub-VP". The
    prior is $\mathcal N(0, s_1^2 I)$, the noise part of the marginal at $t = 1$.

    **Arguments:** `schedule`: any scalar schedule $\gamma(t)$.
    """

    schedule: ad.AbstractSchedule
    covariance: ad.AbstractCovariance = eqx.field(
        default_factory=ad.IdentityCovariance, init=False
    )

    def check_gamma_shape(self, gamma_shape: tuple[int, ...], data_shape: tuple[int, ...]):
        if gamma_shape != ():
            raise ValueError(f"SubVP needs a scalar schedule, got gamma of shape {gamma_shape}.")

    def log_scales(self, gamma: Float[Array, ""]) -> tuple[Float[Array, ""], Float[Array, ""]]:
        r"""$(\log a^2, \log s^2) = (\log q, \gamma + \log q)$, from logs only, so that
        it is exact and differentiable for every $\gamma$."""
        root = 0.5 * gamma + 0.5 * jnp.logaddexp(math.log(4.0), gamma)  # log e^{g/2} sqrt(4+e^g)
        log_q = math.log(2.0) - jnp.logaddexp(jnp.logaddexp(math.log(2.0), gamma), root)
        return log_q, gamma + log_q

    def log_prior_variance(self, gamma_1: Float[Array, ""]) -> Float[Array, ""]:
        r"""$\log s_1^2$: the prior $\mathcal N(0, s_1^2 I)$."""
        return self.log_scales(gamma_1)[1]
# --8<-- [end:process]


# --8<-- [start:mixture]
class Mixture(eqx.Module):
    r"""$\sum_k w_k \mathcal N(\mu_k, v_k I)$ (a $v_k$ may be 0): data whose marginal under
    any scaled-Gaussian process is known,
    $p_t = \sum_k w_k \mathcal N(a_t\mu_k, (a_t^2 v_k + s_t^2) I)$."""

    log_weights: Float[Array, " k"]
    means: Float[Array, "k d"]
    variances: Float[Array, " k"]

    def log_density(self, x, a=1.0, s=0.0) -> Float[Array, ""]:
        r"""$\log \sum_k w_k \mathcal N(x; a\mu_k, (a^2 v_k + s^2) I)$."""
        var = a**2 * self.variances + s**2  # (k,)
        sq = jnp.sum((x[None] - a * self.means) ** 2, axis=1) / var
        per = -0.5 * (sq + x.size * jnp.log(2 * jnp.pi * var))
        return jax.nn.logsumexp(self.log_weights + per)

    def log_marginal(self, process, x, t) -> Float[Array, ""]:
        r"""$\log p_t(x)$ under `process`, from its own scales $(a_t, s_t)$."""
        a, s = process.scales(x, t)
        return self.log_density(x, a, s)

    def score(self, process):
        r"""The exact score $\nabla_x \log p_t(x)$ as a function `score(x, t)`."""
        return jax.grad(lambda x, t: self.log_marginal(process, x, t))

    def sample(self, key, num: int) -> Float[Array, "n d"]:
        kc, kn = jax.random.split(key)
        k = jax.random.categorical(kc, self.log_weights, shape=(num,))
        noise = jax.random.normal(kn, (num, self.means.shape[1]))
        return self.means[k] + jnp.sqrt(self.variances[k])[:, None] * noise


def discrete_blobs(num_levels: int) -> Mixture:
    """Three Gaussian blobs, discretised: the probability of each cell of the grid of
    `num_levels` x `num_levels` bin centres is proportional to the blobs' density there.
    A mixture of zero-variance components, so its marginals are exact too."""
    blobs = Mixture(
        jnp.log(jnp.array([0.5, 0.3, 0.2])), jnp.array(BLOBS), jnp.array([0.02, 0.01, 0.03])
    )
    centres = ad.bin_centres(num_levels)
    cells = jnp.stack(jnp.meshgrid(centres, centres, indexing="ij"), -1).reshape(-1, 2)
    log_p = jax.nn.log_softmax(jax.vmap(blobs.log_density)(cells))
    return Mixture(log_p, cells, jnp.zeros(len(cells)))
# --8<-- [end:mixture]


# --8<-- [start:scales]
def check_scales(process: SubVP) -> None:
    """The math of `log_scales`: s = 1 - a^2, log(s^2/a^2) = gamma, at many gammas."""
    gammas = jnp.linspace(-13.3, 20.0, 1001)
    log_a2, log_s2 = jax.vmap(process.log_scales)(gammas)
    a2, s2 = jnp.exp(log_a2), jnp.exp(log_s2)
    print(f"  max |s - (1 - a^2)|      {jnp.max(jnp.abs(jnp.sqrt(s2) - (1 - a2))):.1e}")
    print(f"  max |log(s^2/a^2) - gamma| {jnp.max(jnp.abs(log_s2 - log_a2 - gammas)):.1e}")
    print(f"  total variance a^2 + s^2 from {jnp.min(a2 + s2):.4f} to {jnp.max(a2 + s2):.4f}")
    x = jnp.array([0.3, -0.2])
    drift, g = process.drift(x, 0.5), process.diffusion_scale(x, 0.5)
    print(f"  at x = {x}, t = 0.5: drift f = {drift}, diffusion g = {g:.4f}")
# --8<-- [end:scales]


# --8<-- [start:likelihood]
def likelihood_check(process, data: Mixture, points) -> np.ndarray:
    """`ode_log_likelihood` with the exact score against the closed-form log p_0."""
    score = data.score(process)

    @jax.jit
    def both(x):
        ode = ad.ode_log_likelihood(process, score, x, key=jax.random.key(0), trace="exact")
        return ode.log_prob, data.log_marginal(process, x, 0.0), ode.nfe

    ode, exact, nfe = (np.asarray(v) for v in jax.lax.map(both, points))
    print("  point                  closed form   ODE (exact trace)   difference   nfe")
    for p, e, o, n in zip(np.asarray(points), exact, ode, nfe):
        print(f"  ({p[0]:+.4f}, {p[1]:+.4f})   {e:11.4f}   {o:17.4f}   {o - e:+10.1e}   {n}")
    return np.stack([exact, ode])
# --8<-- [end:likelihood]


# --8<-- [start:bounds]
def bounds(process, data: Mixture, levels, key, repeats: int) -> None:
    """Every bound in bits/dim with the exact eps-prediction, each example's estimate
    averaged over `repeats` draws, against the exact -log2 P(x) / D of the data."""
    score = data.score(process)

    def model(u, t):  # the exact eps-prediction, from the score
        return process.eps_from_score(u, t, score(u, t))

    xs = ad.from_levels(levels, NUM_LEVELS)  # bin centres, (n, 2)
    exact = -data.log_weights[levels[:, 0] * NUM_LEVELS + levels[:, 1]] / (2 * math.log(2.0))
    draws = jax.jit(jax.vmap(lambda k: ad.nelbo(process, model, xs[0], key=k,
                                                num_levels=NUM_LEVELS)))(
        jax.random.split(key, 4096)
    )
    print("  nelbo of example 0, one draw: " + ", ".join(
        f"{name} {float(value[0]):.4f}" for name, value in vars(draws).items()
    ))
    total = np.asarray(draws.total)
    print(
        f"  over 4096 draws: {interval(total)} bits/dim (exact {float(exact[0]):.3f}); "
        f"{np.mean(total < 0.01):.0%} of the draws are below 0.01, the largest is "
        f"{total.max():.1f}"
    )

    @jax.jit
    def everything(xs, key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        many = jnp.tile(xs, (repeats, 1))  # every example `repeats` times
        ode = ad.ODELikelihood(trace=ad.ExactTrace())
        return {
            "batch_nelbo": ad.batch_nelbo(process, model, many, key=k1, num_levels=NUM_LEVELS),
            "batch_nelbo, T = 100": ad.batch_nelbo(
                process, model, many, key=k2, num_levels=NUM_LEVELS, num_steps=100
            ),
            "dense_vlb, T = 100": jax.vmap(
                lambda x, k: ad.dense_vlb(
                    process, model, x, key=k, num_steps=100, num_levels=NUM_LEVELS
                )
            )(xs, jax.random.split(k3, len(xs))),
            "ode_bits_per_dim": jax.vmap(
                lambda x, k: ad.ode_bits_per_dim(
                    process, ad.score_fn(process, model), x, key=k, num_levels=NUM_LEVELS,
                    dequantization=ad.ProcessDequantization(), likelihood=ode,
                )
            )(xs, jax.random.split(k4, len(xs))),
        }

    out = {"exact -log2 P(x) / D": np.asarray(exact)}
    for name, result in everything(xs, jax.random.fold_in(key, 1)).items():
        total = np.asarray(getattr(result, "total", result))
        if hasattr(result, "total"):  # the terms add up to the total
            terms = result.diffusion + result.prior + result.reconstruction + result.auxiliary
            np.testing.assert_allclose(total, terms, rtol=1e-5, atol=1e-6)
        out[name] = total.reshape(-1, len(xs)).mean(0)  # per example, over the repeats
    print(f"  bound ({len(xs)} examples)      bits/dim            minus exact")
    for name, values in out.items():
        diff = values - out["exact -log2 P(x) / D"]
        print(f"  {name:24s} {interval(values):>17s} {interval(diff):>17s}")


def interval(values) -> str:
    """The mean and its 95% interval over examples."""
    half = 1.96 * np.std(values, ddof=1) / math.sqrt(len(values))
    return f"{np.mean(values):.3f} +- {half:.3f}"
# --8<-- [end:bounds]


# --8<-- [start:samplers]
def draw(process, data: Mixture, key, num: int) -> dict[str, np.ndarray]:
    """`num` samples from each sampler with the exact score, as integer levels."""
    score = data.score(process)
    samplers = {
        "sample_ode": lambda k: ad.sample_ode(process, score, k, SHAPE),
        "sample_sde": lambda k: ad.sample_sde(process, score, k, SHAPE, num_steps=500),
        "sample_ancestral": lambda k: ad.sample_ancestral(process, score, k, SHAPE, num_steps=500),
        "sample_ddim": lambda k: ad.sample_ddim(process, score, k, SHAPE, num_steps=100),
        "sample_annealed_langevin": lambda k: ad.sample_annealed_langevin(
            process, score, k, SHAPE, num_noise_levels=20, num_inner=50
        ),
    }
    keys = jax.random.split(key, num)
    return {
        name: np.asarray(jax.jit(jax.vmap(lambda k: process.decode(sampler(k), NUM_LEVELS)))(keys))
        for name, sampler in samplers.items()
    }
# --8<-- [end:samplers]


def summarise_samples(samples: dict[str, np.ndarray], data: Mixture) -> None:
    """Each sampler's mean, spread, share of samples nearest each blob, and the mean
    log-probability of its samples under the data (the data's own: their entropy)."""
    log_p = np.asarray(data.log_weights).reshape(NUM_LEVELS, NUM_LEVELS)
    reference = np.asarray(data.sample(jax.random.key(99), 20_000))
    rows = {"data (20000 draws)": np.asarray(ad.to_levels(reference, NUM_LEVELS)), **samples}
    means = np.asarray(BLOBS)
    print("  sampler                    mean             std            blob shares   log P")
    for name, levels in rows.items():
        x = np.asarray(ad.from_levels(jnp.asarray(levels), NUM_LEVELS))
        nearest = np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), axis=1)
        w = np.bincount(nearest, minlength=len(means)) / len(x)
        m, sd = x.mean(0), x.std(0)
        print(
            f"  {name:24s} ({m[0]:+.3f}, {m[1]:+.3f})  ({sd[0]:.3f}, {sd[1]:.3f})  "
            f"{w[0]:.2f} {w[1]:.2f} {w[2]:.2f}   {log_p[levels[:, 0], levels[:, 1]].mean():6.2f}"
        )


def plot(data: Mixture, samples: dict, checked: np.ndarray, points, path):
    """The data's probabilities on the grid, with each sampler's draws on top."""
    probs = np.exp(np.asarray(data.log_weights)).reshape(NUM_LEVELS, NUM_LEVELS)
    extent = (-1, 1, -1, 1)
    fig, axes = plt.subplots(2, 3, figsize=(9.6, 6.6), sharex=True, sharey=True)
    ax = axes.flat[0]
    ax.imshow(probs.T, origin="lower", extent=extent, cmap="Greys")
    pts = np.asarray(points)
    ax.scatter(pts[:, 0], pts[:, 1], s=14, color="C3")
    for p, e, o in zip(pts, *checked):
        ax.annotate(f"{o - e:+.0e}", p, fontsize=7, color="C3", xytext=(3, 3),
                    textcoords="offset points")
    ax.set_title("P(x); ODE - closed form at 5 points", fontsize=9)
    for ax, (name, levels) in zip(axes.flat[1:], samples.items()):
        x = np.asarray(ad.from_levels(jnp.asarray(levels), NUM_LEVELS))
        ax.imshow(probs.T, origin="lower", extent=extent, cmap="Greys", alpha=0.5)
        ax.scatter(x[:, 0], x[:, 1], s=2, color="C0", linewidths=0)
        ax.set_title(name, fontsize=9)
    for ax in axes.flat:
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = pathlib.Path(__file__).resolve().parent / "own_process"
    parser.add_argument("--out", type=pathlib.Path, default=default_out)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    matplotlib.use("Agg")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    num_examples, num_samples = (16, 64) if args.quick else (256, 1000)

    # --8<-- [start:build]
    process = SubVP(ad.LinearSchedule(gamma_min=-13.3, gamma_max=20.0))
    data = discrete_blobs(NUM_LEVELS)
    # --8<-- [end:build]
    print("the scales:")
    check_scales(process)
    # three states near the data (the bin centre of each blob's middle, plus the process's
    # noise at t = 0) and two far from it: a bin corner and an empty region
    centres = ad.from_levels(ad.to_levels(jnp.array(BLOBS), NUM_LEVELS), NUM_LEVELS)
    near = jax.vmap(lambda k, x: process.sample_marginal(k, x, 0.0)[0])(
        jax.random.split(jax.random.key(4), 3), centres
    )
    points = jnp.concatenate([near, jnp.array([[0.0, 0.0], [0.7, 0.7]])])
    print("log p_0 at five points:")
    checked = likelihood_check(process, data, points)
    levels = ad.to_levels(data.sample(jax.random.key(1), num_examples), NUM_LEVELS)
    print(f"bounds with the exact model ({NUM_LEVELS} levels per coordinate):")
    bounds(process, data, levels, jax.random.key(2), repeats=8 if args.quick else 64)
    print(f"{num_samples} samples per sampler, exact score:")
    samples = draw(process, data, jax.random.key(3), num_samples)
    summarise_samples(samples, data)
    plot(data, samples, checked, points, args.out / "samplers.png")
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
