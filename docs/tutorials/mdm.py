"""Multivariate diffusions (MDM): critically damped Langevin diffusion and a learned MDM.

Builds `ad.CLD()` and `ad.LearnedMDM(num_aux=1)`, shows their joint state of data and
auxiliary variable and their transition kernels, trains both on the digits with the VDM
tutorial's loop (times sampled by the likelihood weighting), reports the held-out ELBO
with its auxiliary term and an ODE bound, and shows the learned drift matrices. Run from
the repository root:

    python docs/tutorials/mdm.py [--out DIR] [--quick]
"""

import argparse
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import vdm_digits as vdm  # the VDM tutorial's data, network, training loop and evaluation
from matplotlib.figure import Figure

import adaptive_diffusion as ad


# --8<-- [start:build]
def build_mdms(key, num_levels):
    """CLD and a learned MDM with one auxiliary variable, each with its noise predictor,
    starting their bounds where the project's sweep put each family's best start after
    2000 steps (the data's negative log-SNR gamma_min there)."""
    key_mdm, key_cld_net, key_mdm_net = jax.random.split(key, 3)
    cld = ad.CLD(gamma_min=-3.5)
    learned = ad.LearnedMDM(num_aux=1, key=key_mdm, gamma_min=-2.5)
    return {
        "CLD": (cld, vdm.make_denoiser(cld, key_cld_net, num_levels)),
        "learned MDM": (learned, vdm.make_denoiser(learned, key_mdm_net, num_levels)),
    }


def likelihood_times(process):
    """The bound's times, importance-sampled by VP's likelihood weighting on the MDM's
    own linear beta(t) (as the MDM reference samples them)."""
    return ad.LikelihoodWeightedTimes(process.beta_min, process.beta_max)
# --8<-- [end:build]


# --8<-- [start:transition]
def transitions(process, ts):
    """A_t and Sigma_t at each time, `(times, K + 1, K + 1)` each, and the data
    coordinate's negative log-SNR gamma(t) = log(Sigma_t[0, 0] / A_t[0, 0]^2)."""
    a, sigma = jax.vmap(process.transition)(ts)
    gamma = jnp.log(sigma[:, 0, 0]) - 2.0 * jnp.log(jnp.abs(a[:, 0, 0]))
    return a, sigma, gamma


def diffuse_digit(process, x, ts, key):
    """The state u_t ~ q(u_t | u_0) of one digit at each time, one draw of v_0 and one
    white noise for all of them: `(times, K + 1, 1, 8, 8)`."""
    key_v, key_eps = jax.random.split(key)
    u0 = process.initial_state(key_v, x).state  # (K + 1, 1, 8, 8): x, then v_0
    eps = jax.random.normal(key_eps, u0.shape)
    return jnp.stack([process.perturb(u0, t, eps) for t in ts])
# --8<-- [end:transition]


# --8<-- [start:pictures]
def plot_transitions(ts, kernels, path):
    """The entries of A_t and Sigma_t of each process, and gamma(t) of the data coordinate
    with the start t_min of each bound."""
    fig = Figure(figsize=(12.0, 3.5), dpi=100)
    left, middle, right = fig.subplots(1, 3)
    styles = {"CLD": "-", "learned MDM": "--"}
    entries = {(0, 0): "xx", (0, 1): "xv", (1, 0): "vx", (1, 1): "vv"}
    for name, (process, (a, sigma, gamma)) in kernels.items():
        for c, ((i, j), label) in enumerate(entries.items()):
            left.plot(ts, a[:, i, j], styles[name], color=f"C{c}", label=f"$A_{{{label}}}$, {name}")
            if i <= j:
                middle.plot(ts, sigma[:, i, j], styles[name], color=f"C{c}",
                            label=f"$\\Sigma_{{{label}}}$, {name}")
        right.plot(ts, gamma, styles[name], color="black", label=name)
        right.axvline(float(process.t_min), ls=styles[name], color="0.6", lw=0.8)
    left.set_title(r"$A_t$: the mean $\mathbb{E}[u_t \mid u_0] = A_t u_0$")
    middle.set_title(r"$\Sigma_t = \mathrm{Cov}(u_t \mid u_0)$")
    right.set_ylabel(r"$\gamma(t) = \log(\Sigma_{xx} / A_{xx}^2)$")
    right.set_title(r"the data's $-\log \mathrm{SNR}$; grey: $t_{\min}$")
    for ax in (left, middle, right):
        ax.set_xlabel("$t$")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, ncol=2 if ax is not right else 1)
    fig.tight_layout()
    fig.savefig(path)


def plot_diffused_state(states, ts, path):
    """Rows: the data channel x_t and the velocity v_t of one digit under CLD; columns:
    times. One grey scale for the whole figure."""
    fig = Figure(figsize=(1.3 * len(ts), 3.0), dpi=100)
    axes = fig.subplots(2, len(ts), squeeze=False)
    bound = float(np.abs(states).max())
    for j, t in enumerate(ts):
        for i, label in enumerate(("$x_t$", "$v_t$")):
            axes[i, j].imshow(states[j, i, 0], cmap="gray", vmin=-bound, vmax=bound,
                              interpolation="nearest")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if j == 0:
                axes[i, j].set_ylabel(label, fontsize=10)
        axes[0, j].set_title(f"$t = {t:.2f}$", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def plot_matrices(matrices, path):
    """The learned Q (antisymmetric) and D (positive semi-definite) on one colour scale,
    entries written in."""
    bound = max(float(np.abs(np.asarray(m)).max()) for m in matrices.values())
    fig = Figure(figsize=(5.6, 2.6), dpi=100)
    for ax, (name, m) in zip(fig.subplots(1, 2), matrices.items()):
        m = np.asarray(m)
        ax.imshow(m, cmap="RdBu_r", vmin=-bound, vmax=bound)
        for (i, j), value in np.ndenumerate(m):
            colour = "white" if abs(value) > 0.6 * bound else "black"
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=10, color=colour)
        ax.set_xticks(range(len(m)), ["x", "v"])
        ax.set_yticks(range(len(m)), ["x", "v"])
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path)
# --8<-- [end:pictures]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    here = pathlib.Path(__file__).resolve().parent
    parser.add_argument("--out", type=pathlib.Path, default=here / "mdm")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    steps, repeats, ode_examples = (100, 1, 4) if args.quick else (1000, 8, 64)
    start = time.perf_counter()
    keys = jax.random.split(jax.random.key(0), 6)

    x_train, x_test, num_levels = vdm.load_digits()
    models = build_mdms(keys[0], num_levels)
    cld = models["CLD"][0]
    u0 = cld.initial_state(keys[1], x_test[0]).state
    print(f"CLD: K = {cld.num_aux} auxiliary variable, state shape {u0.shape} "
          f"(data, then velocity), network input {cld.network_shape((1, 8, 8))[0]}")
    for name, (process, _) in models.items():
        print(f"  {name}: bound from t_min = {float(process.t_min):.4f}")
    ts_states = (0.0, float(cld.t_min), 0.35, 0.5, 0.7, 1.0)
    states = np.asarray(diffuse_digit(cld, x_test[0], ts_states, keys[2]))
    plot_diffused_state(states, ts_states, args.out / "diffused_state.png")

    results = {}
    for name, params in models.items():
        print(f"\ntraining {name} for {steps} steps")
        times = likelihood_times(params[0])
        loss = vdm.make_loss(num_levels, times=times)
        params = vdm.train(params, x_train, loss=loss, steps=steps, key=keys[3])
        models[name] = params
        elbo = vdm.heldout_elbo(
            params, x_test, keys[4], num_levels=num_levels, repeats=repeats, times=times
        )
        ode = vdm.heldout_ode(params, x_test[:ode_examples], keys[5], num_levels=num_levels)
        results[name] = (elbo, ode)

    print(f"\nheld-out bits/dim ({len(x_test)} test digits, {repeats} draws each; "
          f"uniform model {math.log2(num_levels):.3f})")
    for name, (elbo, ode) in results.items():
        print(f"  {name}")
        print(f"    ELBO            {vdm.mean_and_ci(elbo.total)}")
        for term in ("diffusion", "prior", "reconstruction", "auxiliary"):
            print(f"      {term:<15} {float(jnp.mean(getattr(elbo, term))):.3f}")
        print(f"    ODE ({len(ode)} digits) {vdm.mean_and_ci(ode)}")

    learned = models["learned MDM"][0]
    q, d = learned.matrices()
    print("\nlearned MDM after training:")
    print(f"  Q = {np.array2string(np.asarray(q), precision=3)}".replace("\n", "\n      "))
    print(f"  D = {np.array2string(np.asarray(d), precision=3)}".replace("\n", "\n      "))
    print(f"  |Q + Q^T| max = {float(jnp.abs(q + q.T).max()):.1e}, "
          f"eigenvalues of D: {np.array2string(np.linalg.eigvalsh(np.asarray(d)), precision=3)}")
    plot_matrices({"Q": q, "D": d}, args.out / "learned_qd.png")

    ts = jnp.linspace(0.0, 1.0, 201)
    kernels = {name: (p[0], transitions(p[0], ts)) for name, p in models.items()}
    plot_transitions(np.asarray(ts), kernels, args.out / "transition.png")
    print(f"\npictures in {args.out}; wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
