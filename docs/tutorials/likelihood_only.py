"""Only the likelihood, with your own model: exact log-likelihoods of any callable
`model(x_t, t)` through the probability-flow ODE, checked against a closed form.

    python docs/tutorials/likelihood_only.py [--out DIR] [--quick]
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
from scipy.special import log_ndtr

import adaptive_diffusion as ad
from adaptive_diffusion.data import DigitsSource, levels_to_centres


NUM_LEVELS = 17
SHAPE = (1, 8, 8)


# --8<-- [start:model]
class DigitMixture(eqx.Module):
    r"""Ten diagonal Gaussians, one per digit class, fitted to the train digits: a model
    of the data whose marginal under VP is known in closed form,
    $p_t(x) = \sum_k w_k \mathcal N(x; \alpha_t \mu_k, \alpha_t^2 v_k + \sigma_t^2)$."""

    log_weights: Float[Array, " k"]
    means: Float[Array, "k d"]
    variances: Float[Array, "k d"]
    schedule: ad.AbstractSchedule

    def log_marginal(self, x: Float[Array, "1 8 8"], t) -> Float[Array, ""]:
        r"""$\log p_t(x)$ in nats."""
        alpha, sigma = ad.alpha_sigma(self.schedule(t))
        var = alpha**2 * self.variances + sigma**2
        sq = (x.reshape(1, -1) - alpha * self.means) ** 2 / var
        per_class = -0.5 * jnp.sum(sq + jnp.log(2 * jnp.pi * var), axis=1)
        return jax.nn.logsumexp(self.log_weights + per_class)

    def __call__(self, x, t):
        r"""The optimal noise prediction $\hat\varepsilon = -\sigma_t \nabla \log p_t$:
        exactly what an eps-network trained on this data would aim for."""
        _, sigma = ad.alpha_sigma(self.schedule(t))
        return -sigma * jax.grad(self.log_marginal)(x, t)


def fit_mixture(train: DigitsSource, schedule, floor: float = 0.01) -> DigitMixture:
    """Class frequencies, per-pixel means and variances (plus `floor`) of the digits."""
    xs = levels_to_centres(train.images, NUM_LEVELS).reshape(len(train), -1)
    classes = np.arange(10)
    counts = np.array([np.sum(train.labels == k) for k in classes])
    means = np.stack([xs[train.labels == k].mean(0) for k in classes])
    variances = np.stack([xs[train.labels == k].var(0) for k in classes]) + floor
    return DigitMixture(
        jnp.log(jnp.asarray(counts / counts.sum(), jnp.float32)),
        jnp.asarray(means, jnp.float32),
        jnp.asarray(variances, jnp.float32),
        schedule,
    )
# --8<-- [end:model]


# --8<-- [start:check]
def check_against_closed_form(process, model, xs) -> None:
    """The ODE's log p_0(x) with the exact trace, against the closed form, per example."""
    score = ad.score_fn(process, model, parameterization="eps")

    @jax.jit
    def both(x):
        ode = ad.ode_log_likelihood(process, score, x, key=jax.random.key(0), trace="exact")
        return ode.log_prob, model.log_marginal(x, 0.0), ode.nfe

    ode, exact, nfe = jax.lax.map(both, xs)
    print("  example   closed form (nats)   ODE, exact trace   difference   nfe")
    for i in range(len(xs)):
        difference = ode[i] - exact[i]
        print(f"  {i:7d}   {exact[i]:18.4f}   {ode[i]:16.4f}   {difference:+10.2e}   {nfe[i]}")
    print(f"  largest |difference|: {np.max(np.abs(ode - exact)):.2e} nats")
# --8<-- [end:check]


# --8<-- [start:parameterizations]
def parameterizations(process, model, x) -> None:
    """One model, read as eps, x0, or score prediction, or an analytic score function."""
    def x0_model(u, t):  # a denoiser: E[x_0 | x_t] by Tweedie's formula
        alpha, sigma = ad.alpha_sigma(process.schedule(t))
        return (u - sigma * model(u, t)) / alpha

    def score_model(u, t):  # a score network
        return jax.grad(model.log_marginal)(u, t)

    views = {
        "eps-network, score_fn(..., 'eps')": ad.score_fn(process, model, "eps"),
        "x0-network, score_fn(..., 'x')": ad.score_fn(process, x0_model, "x"),
        "score network, score_fn(..., 'score')": ad.score_fn(process, score_model, "score"),
        "plain function score(u, t)": score_model,
    }
    exact = model.log_marginal(x, 0.0)
    for name, score in views.items():
        result = eqx.filter_jit(
            lambda score: ad.ode_log_likelihood(
                process, score, x, key=jax.random.key(0), trace="exact"
            )
        )(score)
        print(f"  {name:40s} {result.log_prob:10.4f}  ({result.log_prob - exact:+.1e})")
# --8<-- [end:parameterizations]


# --8<-- [start:tolerance]
def tolerance_sweep(process, model, xs, tolerances) -> tuple[np.ndarray, np.ndarray]:
    """|error| against the closed form and vector-field evaluations, per rtol = atol."""
    score = ad.score_fn(process, model)

    def error(x, tol):
        result = ad.ode_log_likelihood(
            process, score, x, key=jax.random.key(0), trace="exact", rtol=tol, atol=tol
        )
        return jnp.abs(result.log_prob - model.log_marginal(x, 0.0)), result.nfe

    errors, nfes = [], []
    for tol in tolerances:  # a Python float: one compilation per tolerance
        err, nfe = jax.jit(lambda xs: jax.lax.map(lambda x: error(x, tol), xs))(xs)
        errors.append(np.asarray(err))
        nfes.append(np.asarray(nfe))
        print(
            f"  rtol = atol = {tol:.0e}: mean |error| {np.mean(err):.2e} nats, "
            f"max {np.max(err):.2e}, mean nfe {np.mean(nfe):.0f}"
        )
    return np.stack(errors), np.stack(nfes)
# --8<-- [end:tolerance]


# --8<-- [start:hutchinson]
def hutchinson_spread(process, model, x, probe_counts, num_keys: int) -> dict:
    """Hutchinson's estimate of log p_0(x) over `num_keys` draws of the probes."""
    score = ad.score_fn(process, model)
    exact = float(model.log_marginal(x, 0.0))
    spread = {}
    for k in probe_counts:

        @jax.jit
        def estimates(keys):
            def one(key):
                return ad.ode_log_likelihood(
                    process, score, x, key=key, trace="hutchinson", num_probes=k
                ).log_prob

            return jax.vmap(one)(keys)

        values = np.asarray(estimates(jax.random.split(jax.random.key(k), num_keys)))
        spread[k] = values - exact
        half = 1.96 * values.std(ddof=1) / math.sqrt(num_keys)
        print(
            f"  {k:2d} probe(s): mean error {np.mean(values - exact):+.3f} "
            f"+- {half:.3f} (95%), std {values.std(ddof=1):.3f} nats over {num_keys} draws"
        )
    return spread
# --8<-- [end:hutchinson]


# --8<-- [start:batch]
def batch_log_likelihood(process, model, xs, key) -> np.ndarray:
    """jit + vmap: one adaptive solve per example, all in one compiled program."""
    score = ad.score_fn(process, model)

    @jax.jit
    def log_probs(xs, keys):
        def one(x, key):
            return ad.ode_log_likelihood(process, score, x, key=key).log_prob

        return jax.vmap(one)(xs, keys)

    keys = jax.random.split(key, len(xs))
    start = time.perf_counter()
    jax.block_until_ready(log_probs(xs, keys))
    first = time.perf_counter() - start
    start = time.perf_counter()
    values = np.asarray(log_probs(xs, keys))
    again = time.perf_counter() - start
    print(
        f"  {len(xs)} examples, one Rademacher probe each: {first:.1f} s with compilation, "
        f"{again:.1f} s again ({1e3 * again / len(xs):.1f} ms per example)"
    )
    return values
# --8<-- [end:batch]


# --8<-- [start:bits]
def bits_per_dim(process, model, xs, key) -> dict[str, np.ndarray]:
    """`ode_bits_per_dim` of each example, for each dequantisation."""
    score = ad.score_fn(process, model)
    dequantizations = {
        "uniform": ad.UniformDequantization(),
        "truncated normal": ad.TruncatedNormalDequantization(),
        "process": ad.ProcessDequantization(),
    }
    out = {}
    for name, dequantization in dequantizations.items():

        @eqx.filter_jit
        def bpd(dequantization, xs, keys):
            def one(x, key):
                return ad.ode_bits_per_dim(
                    process, score, x, key=key, num_levels=NUM_LEVELS,
                    dequantization=dequantization,
                )

            return jax.vmap(one)(xs, keys)

        out[name] = np.asarray(bpd(dequantization, xs, jax.random.split(key, len(xs))))
    return out
# --8<-- [end:bits]


# --8<-- [start:closed_bits]
def closed_form_bits(process, model, xs, key, draws: int) -> dict[str, np.ndarray]:
    """The same bounds with the closed-form log p_0 in place of the ODE's (`draws`
    dequantisations per example), and the exact -log2 P(x) / D of the model's mass in
    each bin, from the normal CDF."""
    dequantizations = {
        "uniform": ad.UniformDequantization(),
        "truncated normal": ad.TruncatedNormalDequantization(),
        "process": ad.ProcessDequantization(),
    }
    scale = -1.0 / (xs[0].size * math.log(2.0))
    out = {}
    for name, dequantization in dequantizations.items():

        @jax.jit
        def bound(x, key):
            def one(k):
                u, log_weight = dequantization(process, k, x, NUM_LEVELS)
                return model.log_marginal(u, 0.0) + log_weight

            return jnp.mean(jax.vmap(one)(jax.random.split(key, draws)))

        keys = jax.random.split(jax.random.fold_in(key, len(out)), len(xs))
        out[name] = scale * np.asarray(jax.vmap(bound)(xs, keys))
    out["exact P(x)"] = scale * exact_log_mass(process, model, xs)
    return out


def exact_log_mass(process, model, xs) -> np.ndarray:
    """log P(x) = log sum_k w_k prod_i [Phi(b_i) - Phi(a_i)] over each pixel's bin, with
    p_0's components N(alpha_0 mu, alpha_0^2 v + sigma_0^2), in float64."""
    alpha, sigma = (float(v) for v in ad.alpha_sigma(process.schedule(0.0)))
    mean = alpha * np.asarray(model.means, np.float64)[None]  # (1, k, d)
    std = np.sqrt(alpha**2 * np.asarray(model.variances, np.float64) + sigma**2)[None]
    x = np.asarray(xs, np.float64).reshape(len(xs), 1, -1)  # (n, 1, d)
    lo, hi = (x - 1.0 / NUM_LEVELS - mean) / std, (x + 1.0 / NUM_LEVELS - mean) / std
    flip = lo > 0  # use the lower tail, where log_ndtr is accurate
    lo, hi = np.where(flip, -hi, lo), np.where(flip, -lo, hi)
    upper, lower = log_ndtr(hi), log_ndtr(lo)
    log_bins = upper + np.log1p(-np.exp(lower - upper))
    per_class = np.asarray(model.log_weights, np.float64) + log_bins.sum(-1)
    top = per_class.max(-1, keepdims=True)
    return (top + np.log(np.exp(per_class - top).sum(-1, keepdims=True)))[:, 0]
# --8<-- [end:closed_bits]


def plot_tolerance(tolerances, errors, nfes, path: pathlib.Path):
    """Mean and largest |error| and the mean evaluations against the tolerance."""
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    ax.loglog(tolerances, errors.mean(1), "o-", label="mean |error|")
    ax.loglog(tolerances, errors.max(1), "s--", label="largest |error|")
    ax.set_xlabel("rtol = atol")
    ax.set_ylabel("|ODE - closed form| (nats)")
    ax.invert_xaxis()
    twin = ax.twinx()
    twin.semilogx(tolerances, nfes.mean(1), "^:", color="C2", label="mean nfe")
    twin.set_ylabel("vector-field evaluations", color="C2")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_hutchinson(spread: dict, path: pathlib.Path):
    """Histograms of the Hutchinson estimate's error for each number of probes."""
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    everything = np.concatenate(list(spread.values()))
    bins = np.linspace(everything.min(), everything.max(), 40)
    for k, errors in spread.items():
        ax.hist(errors, bins=bins, histtype="step", lw=1.5, density=True, label=f"{k} probe(s)")
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_xlabel("Hutchinson estimate - closed form (nats)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def summarise_bits(ode: dict, closed: dict) -> None:
    """Means with 95% intervals over the examples, and the paired difference."""
    def interval(values):
        half = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
        return f"{values.mean():6.3f} +- {half:.3f}"

    print(f"  {'dequantisation':18s} {'ODE':>15s} {'closed form':>15s} {'ODE - closed':>16s}")
    for name in ode:
        print(
            f"  {name:18s} {interval(ode[name]):>15s} {interval(closed[name]):>15s} "
            f"{interval(ode[name] - closed[name]):>16s}"
        )
    print(f"  {'exact -log2 P(x)/D':18s} {'':>15s} {interval(closed['exact P(x)']):>15s}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = pathlib.Path(__file__).resolve().parent / "likelihood_only"
    parser.add_argument("--out", type=pathlib.Path, default=default_out)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    matplotlib.use("Agg")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    num_check, num_keys, num_bits = (2, 16, 8) if args.quick else (6, 200, 64)
    tolerances = [1e-3, 1e-5] if args.quick else [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7]
    probe_counts = (1, 4) if args.quick else (1, 4, 16)

    # --8<-- [start:setup]
    process = ad.VP(ad.LinearSchedule(gamma_min=-13.3, gamma_max=20.0))
    train, test = DigitsSource("train"), DigitsSource("test")
    model = fit_mixture(train, process.schedule)
    xs = jnp.asarray(levels_to_centres(test.images, NUM_LEVELS))  # (297, 1, 8, 8)
    # --8<-- [end:setup]

    print("ODE against the closed form (Tsit5, rtol = atol = 1e-5):")
    check_against_closed_form(process, model, xs[:num_check])
    print("one example through four views of the same model:")
    parameterizations(process, model, xs[0])
    vdm = ad.VP(ad.LinearSchedule(gamma_min=-13.3, gamma_max=5.0))
    vdm_model = fit_mixture(train, vdm.schedule)
    ode = ad.ode_log_likelihood(vdm, ad.score_fn(vdm, vdm_model), xs[0], key=jax.random.key(0),
                                trace="exact")
    print(
        f"with gamma_max = 5 instead: ODE - closed form = "
        f"{ode.log_prob - vdm_model.log_marginal(xs[0], 0.0):+.4f} nats (the prior is not p_1)"
    )
    print("tolerance sweep, exact trace:")
    errors, nfes = tolerance_sweep(process, model, xs[:num_check], tolerances)
    plot_tolerance(np.asarray(tolerances), errors, nfes, args.out / "tolerance.png")
    exact = model.log_marginal(xs[0], 0.0)
    print(f"Hutchinson's estimate on test digit 0 (closed form {exact:.4f} nats):")
    spread = hutchinson_spread(process, model, xs[0], probe_counts, num_keys)
    plot_hutchinson(spread, args.out / "hutchinson.png")
    print("jit + vmap over the test digits:")
    count = 32 if args.quick else len(xs)
    batch = batch_log_likelihood(process, model, xs[:count], jax.random.key(1))
    exact = jax.vmap(lambda x: model.log_marginal(x, 0.0))(xs[:count])
    print(
        f"  mean log p_0: ODE {batch.mean():.3f}, closed form {float(exact.mean()):.3f} nats; "
        f"per-example error std {np.std(batch - np.asarray(exact)):.3f} nats"
    )
    print(f"bits/dim of the first {num_bits} test digits (17 levels; uniform model 4.087):")
    ode_bits = bits_per_dim(process, model, xs[:num_bits], jax.random.key(2))
    closed = closed_form_bits(process, model, xs[:num_bits], jax.random.key(3), draws=64)
    summarise_bits(ode_bits, closed)
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
