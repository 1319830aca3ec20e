"""VDM on the digits: bits/dim by the ELBO and by the probability-flow ODE.

Trains VDM (a VP process with a learned noise schedule and an MLP noise predictor) on
scikit-learn's 8x8 digits with a plain optax loop on `ad.batch_nelbo`, then reports the
held-out negative ELBO and the probability-flow ODE bound in bits/dim, and draws a grid of
samples and the learned schedule. Run from the repository root:

    python docs/tutorials/vdm_digits.py [--out DIR] [--quick]
"""

import argparse
import math
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

import adaptive_diffusion as ad
import adaptive_diffusion.data
import adaptive_diffusion.train


# --8<-- [start:data]
def load_digits() -> tuple[jax.Array, jax.Array, int]:
    """The 1500 training and 297 test digits as bin centres in [-1, 1], `(N, 1, 8, 8)`."""
    train = ad.data.DigitsSource("train")
    test = ad.data.DigitsSource("test")
    num_levels = train.num_levels  # 17 grey levels, 0 .. 16
    x_train = jnp.asarray(ad.data.levels_to_centres(train.images, num_levels))
    x_test = jnp.asarray(ad.data.levels_to_centres(test.images, num_levels))
    return x_train, x_test, num_levels
# --8<-- [end:data]


# --8<-- [start:model]
def make_denoiser(process, key: jax.Array, num_levels: int) -> ad.nn.MLPDenoiser:
    """The MLP noise predictor for `process`'s state on 8x8 digits, with the input
    Fourier features that resolve the 17 levels' bins (of the data channel only)."""
    shape, cond_dim = process.network_shape((1, 8, 8))
    return ad.nn.MLPDenoiser(
        shape,
        cond_dim=cond_dim,
        key=key,
        fourier_exponents=ad.nn.matched_fourier_exponents(num_levels),
        fourier_channels=1,
    )


def build_vdm(key: jax.Array, num_levels: int) -> tuple[ad.VP, ad.nn.MLPDenoiser]:
    """VDM: a VP process with a learned schedule, and the noise predictor."""
    key_schedule, key_net = jax.random.split(key)
    process = ad.VP(ad.LearnedSchedule(key=key_schedule, gamma_min=-13.3, gamma_max=5.0))
    return process, make_denoiser(process, key_net, num_levels)
# --8<-- [end:model]


# --8<-- [start:train]
def make_loss(num_levels: int, times: ad.AbstractTimeSampler = ad.AntitheticTimes()):
    """The mean negative ELBO of a batch, in bits/dim, as a function of the parameters
    `(process, net)`: whatever of the process is an array is trained with the network."""

    def loss(params, xs, key):
        process, net = params
        model = process.denoiser(net)  # the `model(u_t, t)` the core functions take
        terms = ad.batch_nelbo(process, model, xs, key=key, num_levels=num_levels, times=times)
        return jnp.mean(terms.total)

    return loss


def train(params, x_train, *, loss, steps, key, batch_size=128, lr=5e-3, chunk=250):
    """Adam with gradient clipping, warmup and cosine decay on every floating-point array
    of `params`: the network's weights and the process's (its schedule's). `chunk` steps
    run inside one jitted `lax.scan` (a shorter last chunk compiles once more: make
    `steps` a multiple of `chunk`)."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(200, steps // 4), steps)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    arrays, static = eqx.partition(params, eqx.is_inexact_array)
    opt_state = optimizer.init(arrays)

    def one_step(carry, key):
        arrays, opt_state = carry
        key_batch, key_loss = jax.random.split(key)
        xs = x_train[jax.random.choice(key_batch, len(x_train), (batch_size,), replace=False)]
        value, grads = jax.value_and_grad(
            lambda a: loss(eqx.combine(a, static), xs, key_loss)
        )(arrays)
        updates, opt_state = optimizer.update(grads, opt_state, arrays)
        return (optax.apply_updates(arrays, updates), opt_state), value

    @jax.jit
    def run_chunk(arrays, opt_state, keys):
        (arrays, opt_state), values = jax.lax.scan(one_step, (arrays, opt_state), keys)
        return arrays, opt_state, jnp.mean(values)

    for start in range(0, steps, chunk):
        key, key_chunk = jax.random.split(key)
        keys = jax.random.split(key_chunk, min(chunk, steps - start))
        arrays, opt_state, value = run_chunk(arrays, opt_state, keys)
        print(f"  steps {start + len(keys):5d}: training loss {float(value):.3f} bits/dim")
    return eqx.combine(arrays, static)
# --8<-- [end:train]


# --8<-- [start:evaluate]
@eqx.filter_jit
def heldout_elbo(params, xs, key, *, num_levels, repeats, times=ad.AntitheticTimes()):
    """Each test digit's negative ELBO and its terms, averaged over `repeats` draws of
    the time, the noise and the decoder sample (fields shaped `(N,)`, bits/dim)."""
    process, net = params
    model = process.denoiser(net)

    def once(k):
        return ad.batch_nelbo(process, model, xs, key=k, num_levels=num_levels, times=times)

    terms = jax.vmap(once)(jax.random.split(key, repeats))
    return jax.tree.map(lambda field: jnp.mean(field, axis=0), terms)


@eqx.filter_jit
def heldout_ode(params, xs, key, *, num_levels):
    """Each test digit's probability-flow ODE bound (bits/dim): one draw of the process
    dequantisation, Tsit5 at rtol = atol = 1e-5, one Hutchinson probe."""
    process, net = params
    score = ad.score_fn(process, process.denoiser(net), parameterization="eps")

    def one(x, k):
        return ad.ode_bits_per_dim(
            process,
            score,
            x,
            key=k,
            num_levels=num_levels,
            dequantization=ad.ProcessDequantization(),
        )

    return jax.vmap(one)(xs, jax.random.split(key, len(xs)))


def mean_and_ci(values) -> str:
    """`mean  95% CI [low, high]` over examples (normal approximation)."""
    values = np.asarray(values, np.float64)
    mean = values.mean()
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    return f"{mean:.3f}  95% CI [{mean - half:.3f}, {mean + half:.3f}]"
# --8<-- [end:evaluate]


# --8<-- [start:pictures]
@eqx.filter_jit
def draw_samples(params, key, *, num, num_levels, num_steps=1000):
    """`num` samples by VDM's ancestral sampler, decoded to integer levels."""
    process, net = params
    score = ad.score_fn(process, process.denoiser(net))

    def one(k):
        u = ad.sample_ancestral(process, score, k, (1, 8, 8), num_steps=num_steps)
        return process.decode(u, num_levels)

    return jax.vmap(one)(jax.random.split(key, num))


def plot_schedule(ts, learned, initial, path):
    """The learned gamma(t) = -log SNR against the one training started from."""
    fig = Figure(figsize=(5.0, 3.4), dpi=100)
    ax = fig.add_subplot()
    ax.plot(ts, initial, color="0.6", ls="--", label="at initialisation")
    ax.plot(ts, learned, color="C0", label="learned")
    ax.set_xlabel("$t$")
    ax.set_ylabel(r"$\gamma(t) = -\log \mathrm{SNR}(t)$")
    ax.set_title("VDM's noise schedule on the digits")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
# --8<-- [end:pictures]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    here = pathlib.Path(__file__).resolve().parent
    parser.add_argument("--out", type=pathlib.Path, default=here / "vdm_digits")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    steps, repeats, ode_examples = (200, 1, 8) if args.quick else (3000, 8, 297)
    num_samples, sample_steps = (16, 100) if args.quick else (64, 1000)
    start = time.perf_counter()

    x_train, x_test, num_levels = load_digits()
    key_model, key_train, key_elbo, key_ode, key_samples = jax.random.split(jax.random.key(0), 5)
    params = build_vdm(key_model, num_levels)
    initial_schedule = params[0].schedule
    print(f"training VDM for {steps} steps on {len(x_train)} digits")
    params = train(params, x_train, loss=make_loss(num_levels), steps=steps, key=key_train)

    elbo = heldout_elbo(params, x_test, key_elbo, num_levels=num_levels, repeats=repeats)
    ode = heldout_ode(params, x_test[:ode_examples], key_ode, num_levels=num_levels)
    print(f"\nheld-out bits/dim ({len(x_test)} test digits; a uniform model scores "
          f"log2({num_levels}) = {math.log2(num_levels):.3f})")
    print(f"  ELBO ({repeats} draws per digit)  {mean_and_ci(elbo.total)}")
    for name in ("diffusion", "prior", "reconstruction"):
        print(f"    {name:<15} {float(jnp.mean(getattr(elbo, name))):.3f}")
    print(f"  ODE ({len(ode)} digits, 1 draw)  {mean_and_ci(ode)}")

    levels = draw_samples(
        params, key_samples, num=num_samples, num_levels=num_levels, num_steps=sample_steps
    )
    ad.train.save_image_grid(np.asarray(levels), num_levels, args.out / "samples.png")
    ts = jnp.linspace(0.0, 1.0, 201)
    learned = jax.vmap(params[0].schedule)(ts)
    initial = jax.vmap(initial_schedule)(ts)
    print(f"  learned endpoints: gamma(0) = {float(learned[0]):.2f}, "
          f"gamma(1) = {float(learned[-1]):.2f}")
    plot_schedule(np.asarray(ts), np.asarray(learned), np.asarray(initial),
                  args.out / "schedule.png")
    print(f"\npictures in {args.out}; wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
