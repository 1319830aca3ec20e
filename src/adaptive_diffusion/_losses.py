r"""The variational bound (VDM, Kingma et al. 2021), per example, in bits per dimension.

For discrete data $x$ with $L$ levels and a process with state $u_0$,
$$-\log p(x) \le \underbrace{-\mathbb E\log p(x \mid u_0)}_{\text{reconstruction}}
+ \underbrace{\mathrm{KL}(q(u_1 \mid u_0) \Vert p(u_1))}_{\text{prior}}
+ \underbrace{\mathcal L_\infty \text{ or } \mathcal L_T}_{\text{diffusion}}
+ \log q(u_0 \mid x),$$
with the continuous-time diffusion term
$\mathcal L_\infty = \mathbb E_{t \sim U(0,1)}[\tfrac12 \sum_i \gamma_i'(t)
(\varepsilon_i - \hat\varepsilon_i)^2]$ (VDM eq. 17) and the $T$-step term
$\mathcal L_T = T\,\mathbb E_{i \sim U\{1..T\}}[\tfrac12 \sum_j
\operatorname{expm1}(\gamma_j(t_i) - \gamma_j(t_{i-1}))(\varepsilon_j -
\hat\varepsilon_j)^2]$, $t_i = i/T$ (VDM eq. 14). Each term in nats is divided by
$D \ln 2$ for bits per dimension, $D$ the number of data dimensions.
"""

import abc
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._custom_types import Data, State, Time
from ._discrete import check_discrete
from ._parameterizations import AbstractParameterization, as_parameterization
from ._processes import AbstractProcess, AbstractVPProcess, MuLAN


class NELBO(eqx.Module):
    r"""The negative ELBO and its terms, in bits per dimension (per example, or batched).

    `total` is the sum of `diffusion`, `prior`, `reconstruction`, `latent` and (for
    processes with auxiliary variables) $\log q(u_0 \mid x)$. `latent` is MuLAN's
    $\mathrm{KL}(q(z \mid x) \Vert p(z))$ term, zero (the default) for every other process.
    """

    total: Float[Array, "*batch"]
    diffusion: Float[Array, "*batch"]
    prior: Float[Array, "*batch"]
    reconstruction: Float[Array, "*batch"]
    latent: Float[Array, "*batch"]

    def __init__(
        self,
        total: Float[Array, "*batch"],
        diffusion: Float[Array, "*batch"],
        prior: Float[Array, "*batch"],
        reconstruction: Float[Array, "*batch"],
        latent: Float[Array, "*batch"] | None = None,
    ):
        self.total = total
        self.diffusion = diffusion
        self.prior = prior
        self.reconstruction = reconstruction
        self.latent = jnp.zeros_like(total) if latent is None else latent


def nelbo(
    process: AbstractProcess,
    model: Callable[[State, Time], State],
    x: Data,
    *,
    key: PRNGKeyArray,
    num_levels: int = 256,
    parameterization: str | AbstractParameterization = "eps",
    num_steps: int | None = None,
    t: Time | None = None,
) -> NELBO:
    r"""A one-sample estimate of the negative ELBO of one example, in bits/dim.

    **Arguments:**

    - `process`: the forward process.
    - `model`: the network, `model(u_t, t)`; predicts $\varepsilon$ unless
      `parameterization` says otherwise.
    - `x`: one example on the grid of bin centres $-1 + (2k + 1)/L$; data that are
      off the grid, outside $[-1, 1]$ or non-finite raise an error (also under `jit`).
    - `key`: PRNG key for $t$, the noise and the decoder sample.
    - `num_levels`: the number of levels $L$ of the data (256 for 8-bit images).
    - `parameterization`: `"eps"`, `"x"`, `"v"`, `"score"` or an object.
    - `num_steps`: `None` for the continuous-time bound, or $T$ for the $T$-step one.
    - `t`: a fixed time instead of $t \sim U(0, 1)$ (used by `batch_nelbo`'s
      low-discrepancy sampler). With `num_steps`, it is rounded up to the grid $i/T$.

    **Returns:** `NELBO(total, diffusion, prior, reconstruction)`, scalars in bits/dim.
    """
    x = check_discrete(x, num_levels)
    parameterization = as_parameterization(parameterization)
    key_ends, key_t, key_noise = jax.random.split(key, 3)
    u0, log_q, reconstruction, prior = endpoint_terms(process, x, key_ends, num_levels)
    if t is None:
        t = jax.random.uniform(key_t)
    if num_steps is not None:
        if num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer or None, got {num_steps}.")
        t = jnp.maximum(jnp.ceil(t * num_steps), 1.0) / num_steps
    u_t, eps = process.sample_marginal(key_noise, u0, t)
    eps_hat = parameterization.to_eps(process, model(u_t, t), u_t, t)
    if num_steps is None:
        diffusion = process.diffusion_loss(t, eps, eps_hat)
    else:
        diffusion = num_steps * process.diffusion_loss_discrete(
            t - 1.0 / num_steps, t, eps, eps_hat
        )
    return assemble_nelbo(x, reconstruction, prior, diffusion, log_q)


def endpoint_terms(
    process: AbstractProcess, x: Data, key: PRNGKeyArray, num_levels: int
) -> tuple[State, Float[Array, ""], Float[Array, ""], Float[Array, ""]]:
    r"""The state $u_0$ and the terms of the bound that do not involve the network.

    **Returns:** `(u0, log_q, reconstruction, prior)`: $\log q(u_0 \mid x)$, the decoder's
    $-\log p(x \mid z_0)$ at one draw $z_0 \sim q(z_0 \mid u_0)$, and
    $\mathrm{KL}(q(u_1 \mid u_0) \Vert p(u_1))$, all in nats.
    """
    key_state, key_z0 = jax.random.split(key)
    u0, log_q = process.initial_state(key_state, x)
    z0, _ = process.sample_marginal(key_z0, u0, 0.0)
    return u0, log_q, process.decoder_nll(z0, x, num_levels), process.prior_kl(u0)


def assemble_nelbo(
    x: Data,
    reconstruction: Float[Array, ""],
    prior: Float[Array, ""],
    diffusion: Float[Array, ""],
    log_q: Float[Array, ""],
) -> NELBO:
    """The bound's terms in nats, converted to bits per dimension of `x`."""
    to_bpd = 1.0 / (x.size * math.log(2.0))
    return NELBO(
        total=(reconstruction + prior + diffusion + log_q) * to_bpd,
        diffusion=diffusion * to_bpd,
        prior=prior * to_bpd,
        reconstruction=reconstruction * to_bpd,
    )


def antithetic_times(key: PRNGKeyArray, batch_size: int) -> Float[Array, " batch"]:
    r"""VDM's low-discrepancy times $t_i = (u + i/B) \bmod 1$, $u \sim U(0, 1)$.

    Each $t_i$ is marginally uniform, and the batch covers $[0, 1)$ evenly, which lowers
    the variance of the batch-mean diffusion loss.
    """
    u = jax.random.uniform(key)
    return jnp.mod(u + jnp.arange(batch_size) / batch_size, 1.0)


class AbstractTimeSampler(eqx.Module):
    r"""How a bound draws its diffusion times, per batch and per example.

    `uniforms(key, n)` gives $n$ numbers $u$, each marginally uniform on $[0, 1)$;
    `sampler(process, x, u)` maps one to a time $t$ and an importance weight $w$ with
    $\mathbb E[w\,L(t)] = \int_0^1 L(t)\,dt$ for any integrand $L$, so the weighted
    diffusion term stays an unbiased estimate of the continuous-time one.
    """

    @abc.abstractmethod
    def uniforms(self, key: PRNGKeyArray, batch_size: int) -> Float[Array, " batch"]:
        """`batch_size` numbers, each marginally uniform on $[0, 1)$."""

    @abc.abstractmethod
    def __call__(
        self, process: AbstractVPProcess, x: Data, u: Time
    ) -> tuple[Float[Array, ""], Float[Array, ""]]:
        """`(t, weight)` for one example, from its uniform number `u`."""


def _unweighted(u: Time) -> tuple[Float[Array, ""], Float[Array, ""]]:
    u = jnp.asarray(u, dtype=jnp.result_type(float))
    return u, jnp.ones_like(u)


class UniformTimes(AbstractTimeSampler):
    r"""Independent $t \sim U(0, 1)$ for every example, unweighted."""

    def uniforms(self, key: PRNGKeyArray, batch_size: int) -> Float[Array, " batch"]:
        return jax.random.uniform(key, (batch_size,))

    def __call__(
        self, process: AbstractVPProcess, x: Data, u: Time
    ) -> tuple[Float[Array, ""], Float[Array, ""]]:
        return _unweighted(u)


class AntitheticTimes(AbstractTimeSampler):
    r"""VDM's low-discrepancy times across the batch (`antithetic_times`), unweighted."""

    def uniforms(self, key: PRNGKeyArray, batch_size: int) -> Float[Array, " batch"]:
        return antithetic_times(key, batch_size)

    def __call__(
        self, process: AbstractVPProcess, x: Data, u: Time
    ) -> tuple[Float[Array, ""], Float[Array, ""]]:
        return _unweighted(u)


class ArcLengthTimes(AbstractTimeSampler):
    r"""Times spread by the arc length of the example's own schedule, importance-weighted.

    With the speed $\ell(t) = \lVert \gamma'(t) \rVert_2$ (over the data dimensions) and
    the arc length $L(t) = \int_0^t \ell$, $t = L^{-1}(u\,L(1))$ has density
    $\ell(t)/L(1)$: times crowd where the schedule moves fastest, and the weight
    $w = L(1)/\ell(t)$ keeps the estimate unbiased. $L$ is the trapezoid rule on
    `num_points` equally spaced times, inverted exactly (piecewise linearly), and $w$ is the
    reciprocal of the density of *that* sampler (piecewise constant), so the estimate is
    unbiased for any grid; the grid only sets how close it is to the arc-length sampler.

    The reference code has this sampler (`inverse_sampling` of its polynomial schedule,
    which snaps $t$ to the nearest grid point and returns $L(1)$ as the scale) but its
    training loop does not call it. Its effect on the variance of the loss is measured by
    `benchmarks/mulan_time_sampling.py`. Continuous time only.

    **Arguments:** `base`, the sampler of the uniform numbers (default `AntitheticTimes()`),
    and `num_points`, the grid size.
    """

    base: AbstractTimeSampler = AntitheticTimes()
    num_points: int = eqx.field(default=1000, static=True)

    def uniforms(self, key: PRNGKeyArray, batch_size: int) -> Float[Array, " batch"]:
        return self.base.uniforms(key, batch_size)

    def __call__(
        self, process: AbstractVPProcess, x: Data, u: Time
    ) -> tuple[Float[Array, ""], Float[Array, ""]]:
        grid = jnp.linspace(0.0, 1.0, self.num_points)
        _, dgamma = jax.vmap(lambda s: process.gamma_and_derivative(s, x))(grid)
        speed = jnp.linalg.norm(dgamma.reshape(self.num_points, -1), axis=1)
        width = 1.0 / (self.num_points - 1)
        cells = 0.5 * (speed[1:] + speed[:-1]) * width
        cdf = jnp.concatenate([jnp.zeros((1,), cells.dtype), jnp.cumsum(cells)])
        target = jnp.asarray(u, cdf.dtype) * cdf[-1]
        j = jnp.clip(jnp.searchsorted(cdf, target, side="right") - 1, 0, self.num_points - 2)
        mass = jnp.maximum(cells[j], jnp.finfo(cells.dtype).tiny)
        t = jnp.clip(grid[j] + width * (target - cdf[j]) / mass, 0.0, 1.0)
        return t, cdf[-1] * width / mass


def batch_bound(
    bound: Callable[[Data, PRNGKeyArray, Float[Array, ""]], NELBO],
    xs: Float[Array, " batch *shape"],
    *,
    key: PRNGKeyArray,
    times: AbstractTimeSampler = AntitheticTimes(),
) -> NELBO:
    """A per-example bound over a batch: `bound(x, key, u)` under `vmap`, each example
    with its own key and uniform number `u` from `times.uniforms` (VDM's low-discrepancy
    times by default); each field of the result has shape `(batch,)`.

    The one place the batch's keys are split, so every batched bound (`batch_nelbo`,
    `mulan_batch_nelbo`, the training models' `nelbo`) uses them alike.
    """
    key_t, key_rest = jax.random.split(key)
    uniforms = times.uniforms(key_t, xs.shape[0])
    keys = jax.random.split(key_rest, xs.shape[0])
    return jax.vmap(bound)(xs, keys, uniforms)


def batch_nelbo(
    process: AbstractProcess,
    model: Callable[[State, Time], State],
    xs: Float[Array, " batch *shape"],
    *,
    key: PRNGKeyArray,
    num_levels: int = 256,
    parameterization: str | AbstractParameterization = "eps",
    num_steps: int | None = None,
) -> NELBO:
    """`nelbo` over a batch with low-discrepancy times; each field has shape `(batch,)`.

    Arguments as `nelbo`, with `xs` a batch of examples (leading axis).
    """

    def one(x, k, t):
        return nelbo(
            process,
            model,
            x,
            key=k,
            num_levels=num_levels,
            parameterization=parameterization,
            num_steps=num_steps,
            t=t,
        )

    return batch_bound(one, xs, key=key)


# A stream of its own for the latent draw: with JAX's partitionable threefry,
# fold_in(key, i) equals split(key, n)[i], which `nelbo` uses for its own draws.
_LATENT_STREAM = 0x4D754C41


def mulan_nelbo(
    mulan: MuLAN,
    net: Callable[..., State],
    x: Data,
    *,
    key: PRNGKeyArray,
    num_levels: int = 256,
    parameterization: str | AbstractParameterization = "eps",
    num_steps: int | None = None,
    t: Time | None = None,
    times: AbstractTimeSampler = UniformTimes(),
) -> NELBO:
    r"""A one-sample estimate of MuLAN's negative ELBO of one example, in bits/dim.

    $$-\log p(x) \le \mathbb E_{q(z \mid x)}\Big[\underbrace{-\log p(x \mid z_0)}_
    {\text{reconstruction}} + \underbrace{\mathrm{KL}(q(z_1 \mid x, z) \Vert p(z_1))}_
    {\text{prior}} + \underbrace{\tfrac12 \mathbb E_t \textstyle\sum_i \gamma_i'(z, t)
    (\varepsilon_i - \hat\varepsilon_i)^2}_{\text{diffusion}}\Big]
    + \underbrace{\mathrm{KL}(q(z \mid x) \Vert p(z))}_{\text{latent}},$$
    or with `num_steps` $= T$ the finite-$T$ diffusion term
    $\tfrac{T}{2} \sum_i \operatorname{expm1}(\gamma_i(z, t) - \gamma_i(z, s))
    (\varepsilon_i - \hat\varepsilon_i)^2$, $s = t - 1/T$. One $z \sim q(z \mid x)$ is
    drawn, and `nelbo` runs on `mulan.condition(z)` with `mulan.denoiser(net, z)`; the
    latent term is the family's `kl` (see `TopKLatent` for the top-$k$ latent's).

    **Arguments:**

    - `mulan`: the model; `net`: its network `net(h, t, cond)` (see `MuLAN.denoiser`).
    - `x`: one example on the grid of `num_levels` bin centres.
    - `key`: PRNG key for $z$, $t$, the noise and the decoder sample.
    - `num_levels`, `parameterization`, `num_steps`: as `nelbo` (with `"v"` the diffusion
      term is $\tfrac12 \sum_i \alpha_{t,i}^2 \gamma_i' (v_i - \hat v_i)^2$, the same number).
    - `t`: the uniform number `times` maps to the diffusion time (the time itself for
      `UniformTimes` and `AntitheticTimes`); drawn when `None`.
    - `times`: the time sampler; `ArcLengthTimes()` importance-weights the diffusion term.

    **Returns:** `NELBO(total, diffusion, prior, reconstruction, latent)` in bits/dim.
    """
    if num_steps is not None and isinstance(times, ArcLengthTimes):
        raise ValueError("ArcLengthTimes weights the continuous-time bound; use num_steps=None.")
    x = check_discrete(x, num_levels)
    key_latent, key_t = jax.random.split(jax.random.fold_in(key, _LATENT_STREAM))
    params = mulan.posterior_params(x)
    z = mulan.latent.sample(key_latent, params)
    process = mulan.condition(z)
    if t is None:
        t = jax.random.uniform(key_t)
    t, weight = times(process, x, t)
    bound = nelbo(
        process,
        mulan.denoiser(net, z),
        x,
        key=key,
        num_levels=num_levels,
        parameterization=parameterization,
        num_steps=num_steps,
        t=t,
    )
    latent = mulan.latent.kl(params) / (x.size * math.log(2.0))
    return NELBO(
        total=bound.total + (weight - 1.0) * bound.diffusion + latent,
        diffusion=weight * bound.diffusion,
        prior=bound.prior,
        reconstruction=bound.reconstruction,
        latent=latent,
    )


def mulan_batch_nelbo(
    mulan: MuLAN,
    net: Callable[..., State],
    xs: Float[Array, " batch *shape"],
    *,
    key: PRNGKeyArray,
    num_levels: int = 256,
    parameterization: str | AbstractParameterization = "eps",
    num_steps: int | None = None,
    times: AbstractTimeSampler = AntitheticTimes(),
) -> NELBO:
    """`mulan_nelbo` over a batch; each field has shape `(batch,)`.

    The uniform numbers come from `times.uniforms` (VDM's low-discrepancy times by
    default), each example with its own latent. The keys are used as `batch_nelbo` uses
    them, so MuLAN with `NoLatent` and a `FixedLatentSchedule` gives `batch_nelbo`'s
    numbers exactly.

    Arguments as `mulan_nelbo`, with `xs` a batch of examples (leading axis).
    """

    def one(x, k, u):
        return mulan_nelbo(
            mulan,
            net,
            x,
            key=k,
            num_levels=num_levels,
            parameterization=parameterization,
            num_steps=num_steps,
            t=u,
            times=times,
        )

    return batch_bound(one, xs, key=key, times=times)
