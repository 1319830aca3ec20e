r"""The variational bound (VDM, Kingma et al. 2021), per example, in bits per dimension.

For discrete data $x$ with $L$ levels and a linear-Gaussian process with state
$u_0 \sim q(u_0 \mid x)$,
$$-\log p(x) \le \underbrace{-\mathbb E\log p(x \mid u_{t_{\min}})}_{\text{reconstruction}}
+ \underbrace{\mathrm{KL}(q(u_1 \mid u_0) \Vert p(u_1))}_{\text{prior}}
+ \underbrace{\mathcal L_\infty \text{ or } \mathcal L_T}_{\text{diffusion}}
+ \underbrace{\mathbb E \log \frac{q(\mathrm{aux} \mid x)}{p(\mathrm{aux})}}_{\text{auxiliary}},$$
with the continuous-time diffusion term
$\mathcal L_\infty = (1 - t_{\min})\,\mathbb E_{t \sim U(t_{\min}, 1)}[\ell(t)]$, for VP
$\ell(t) = \tfrac12 \sum_i \gamma_i'(t) (\varepsilon_i - \hat\varepsilon_i)^2$ (VDM eq. 17), and
the $T$-step term $\mathcal L_T = T\,\mathbb E_{i \sim U\{1..T\}}[\mathrm{KL}_i]$ over the grid
$t_i = t_{\min} + (1 - t_{\min})\, i/T$ (VDM eq. 14). What each term is for a family is a
method of its process; the auxiliary term is the process's `initial_state` cost (MuLAN's
latent KL; zero when the state is the data). Each term in nats is divided by $D \ln 2$
for bits per dimension, $D$ the number of data dimensions.
"""

import abc
import math
from collections.abc import Callable
from typing import TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._custom_types import Data, Noise, State, Time
from ._discrete import check_discrete, check_discrete_eagerly
from ._parameterizations import AbstractParameterization, as_parameterization
from ._processes import (
    AbstractLinearGaussianProcess,
    AbstractLinearProcess,
    AbstractProcess,
    require_capability,
)
from ._schedules import linear_beta, linear_beta_integral


_Out = TypeVar("_Out")


class NELBO(eqx.Module):
    r"""The negative ELBO and its terms, in bits per dimension (per example, or batched).

    `total` is the sum of the other fields. `auxiliary` is what the auxiliary part of
    the state costs, $\log q(\mathrm{aux} \mid x) - \log p(\mathrm{aux})$ in expectation
    (MuLAN's latent KL); zero for processes whose state is the data.
    """

    total: Float[Array, "*batch"]
    diffusion: Float[Array, "*batch"]
    prior: Float[Array, "*batch"]
    reconstruction: Float[Array, "*batch"]
    auxiliary: Float[Array, "*batch"]


def unit_to_time(process: AbstractProcess, t: Time) -> Float[Array, ""]:
    r"""$t_{\min} + (1 - t_{\min})\,t$: a time on $[0, 1]$ mapped to the process's range."""
    t_min = process.t_min
    return t_min + (1.0 - t_min) * jnp.asarray(t, dtype=jnp.result_type(float))


class AbstractTimeSampler(eqx.Module):
    r"""How a bound draws its diffusion times, per batch and per example.

    `uniforms(key, n)` gives $n$ numbers $v$, each marginally uniform on $[0, 1)$;
    the sampler maps one to a time $t \in [0, 1]$ and an importance weight $w$ with
    $\mathbb E[w\,L(t)] = \int_0^1 L(t)\,dt$ for any integrand $L$ (`__call__`), or to a
    step of the $T$-step grid with $\mathbb E[w\,L(t_i)] = \tfrac1T \sum_i L(t_i)$
    (`on_grid`), so the weighted diffusion term stays an unbiased estimate of the bound.
    The times are on the unit interval; the bound maps them to $[t_{\min}, 1]$.
    """

    @abc.abstractmethod
    def uniforms(self, key: PRNGKeyArray, batch_size: int) -> Float[Array, " batch"]:
        """`batch_size` numbers, each marginally uniform on $[0, 1)$."""

    @abc.abstractmethod
    def __call__(
        self, process: AbstractLinearProcess, u0: State, uniform: Time
    ) -> tuple[Float[Array, ""], Float[Array, ""]]:
        """`(t, weight)` for one example with state `u0`, from its uniform number."""

    @abc.abstractmethod
    def on_grid(
        self, process: AbstractLinearProcess, u0: State, uniform: Time, num_steps: int
    ) -> tuple[Float[Array, ""], Float[Array, ""]]:
        """`(t_i, weight)`: a step $t_i = i/T$, $i \\in \\{1, \\dots, T\\}$, of the grid."""


def _unweighted(uniform: Time) -> tuple[Float[Array, ""], Float[Array, ""]]:
    uniform = jnp.asarray(uniform, dtype=jnp.result_type(float))
    return uniform, jnp.ones_like(uniform)


def _grid_step(uniform: Time, num_steps: int) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """The grid step $\\lceil vT \\rceil / T$ holding $v$, each step with probability $1/T$."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer or None, got {num_steps}.")
    uniform, weight = _unweighted(uniform)
    return jnp.maximum(jnp.ceil(uniform * num_steps), 1.0) / num_steps, weight


class UniformTimes(AbstractTimeSampler):
    r"""Independent $t \sim U(0, 1)$ for every example, unweighted."""

    def uniforms(self, key: PRNGKeyArray, batch_size: int) -> Float[Array, " batch"]:
        return jax.random.uniform(key, (batch_size,))

    def __call__(
        self, process: AbstractLinearProcess, u0: State, uniform: Time
    ) -> tuple[Float[Array, ""], Float[Array, ""]]:
        return _unweighted(uniform)

    def on_grid(
        self, process: AbstractLinearProcess, u0: State, uniform: Time, num_steps: int
    ) -> tuple[Float[Array, ""], Float[Array, ""]]:
        return _grid_step(uniform, num_steps)


def antithetic_times(key: PRNGKeyArray, batch_size: int) -> Float[Array, " batch"]:
    r"""VDM's low-discrepancy times $t_i = (v + i/B) \bmod 1$, $v \sim U(0, 1)$.

    Each $t_i$ is marginally uniform, and the batch covers $[0, 1)$ evenly, which lowers
    the variance of the batch-mean diffusion loss.
    """
    v = jax.random.uniform(key)
    return jnp.mod(v + jnp.arange(batch_size) / batch_size, 1.0)


class AntitheticTimes(AbstractTimeSampler):
    r"""VDM's low-discrepancy times across the batch (`antithetic_times`), unweighted."""

    def uniforms(self, key: PRNGKeyArray, batch_size: int) -> Float[Array, " batch"]:
        return antithetic_times(key, batch_size)

    def __call__(
        self, process: AbstractLinearProcess, u0: State, uniform: Time
    ) -> tuple[Float[Array, ""], Float[Array, ""]]:
        return _unweighted(uniform)

    def on_grid(
        self, process: AbstractLinearProcess, u0: State, uniform: Time, num_steps: int
    ) -> tuple[Float[Array, ""], Float[Array, ""]]:
        return _grid_step(uniform, num_steps)


class StepTimes(AbstractTimeSampler):
    r"""DDPM's discrete times: $i \sim U\{1, \dots, T\}$ for every example, at
    $t_i = (i - 1)/(T - 1)$, where `BetaSchedule` and `DDPM` put their latents
    $x_1, \dots, x_T$; unweighted. For noise-prediction training (`denoising_loss`);
    the $T$-step bound has its own grid (`on_grid`, as `UniformTimes`).

    **Arguments:** `num_times`: $T \ge 2$.
    """

    num_times: int = eqx.field(static=True)

    def __check_init__(self):
        if self.num_times < 2:
            raise ValueError(f"StepTimes needs num_times >= 2, got {self.num_times}.")

    def uniforms(self, key: PRNGKeyArray, batch_size: int) -> Float[Array, " batch"]:
        return jax.random.uniform(key, (batch_size,))

    def __call__(
        self, process: AbstractLinearProcess, u0: State, uniform: Time
    ) -> tuple[Float[Array, ""], Float[Array, ""]]:
        uniform, weight = _unweighted(uniform)
        step = jnp.minimum(jnp.floor(uniform * self.num_times), self.num_times - 1)
        return step / (self.num_times - 1), weight

    def on_grid(
        self, process: AbstractLinearProcess, u0: State, uniform: Time, num_steps: int
    ) -> tuple[Float[Array, ""], Float[Array, ""]]:
        return _grid_step(uniform, num_steps)


class AbstractContinuousTimeSampler(AbstractTimeSampler):
    """An importance sampler of the continuous-time bound only: it has no $T$-step form."""

    def on_grid(
        self, process: AbstractLinearProcess, u0: State, uniform: Time, num_steps: int
    ) -> tuple[Float[Array, ""], Float[Array, ""]]:
        raise ValueError(
            f"{type(self).__name__} weights the continuous-time bound; use num_steps=None, "
            "or UniformTimes / AntitheticTimes for the T-step bound."
        )


class ArcLengthTimes(AbstractContinuousTimeSampler):
    r"""Times spread by the arc length of the example's own schedule, importance-weighted.

    With the speed $\ell(t) = \lVert \gamma'(t) \rVert_2$ of the process's log-SNR
    `gamma(u0, t)` (over the data dimensions) and the arc length $L(t) = \int_0^t \ell$,
    $t = L^{-1}(v\,L(1))$ has density $\ell(t)/L(1)$: times crowd where the schedule moves
    fastest, and the weight $w = L(1)/\ell(t)$ keeps the estimate unbiased. $L$ is the
    trapezoid rule on `num_points` equally spaced times, inverted exactly (piecewise
    linearly), and $w$ is the reciprocal of the density of *that* sampler (piecewise
    constant), so the estimate is unbiased for any grid; the grid only sets how close it
    is to the arc-length sampler.

    The MuLAN reference code has this sampler (`inverse_sampling` of its polynomial
    schedule, which snaps $t$ to the nearest grid point and returns $L(1)$ as the scale)
    but its training loop does not call it. Its effect on the variance of the loss is
    measured by `benchmarks/mulan_time_sampling.py`. Continuous time only.

    **Arguments:** `base`, the sampler of the uniform numbers (default `AntitheticTimes()`),
    and `num_points`, the grid size.
    """

    base: AbstractTimeSampler = AntitheticTimes()
    num_points: int = eqx.field(default=1000, static=True)

    def uniforms(self, key: PRNGKeyArray, batch_size: int) -> Float[Array, " batch"]:
        return self.base.uniforms(key, batch_size)

    def __call__(
        self, process: AbstractLinearProcess, u0: State, uniform: Time
    ) -> tuple[Float[Array, ""], Float[Array, ""]]:
        grid = jnp.linspace(0.0, 1.0, self.num_points)

        def rate(s):
            return jax.jvp(lambda r: process.gamma(u0, r), (s,), (jnp.ones_like(s),))[1]

        speed = jnp.linalg.norm(jax.vmap(rate)(grid).reshape(self.num_points, -1), axis=1)
        width = 1.0 / (self.num_points - 1)
        cells = 0.5 * (speed[1:] + speed[:-1]) * width
        cdf = jnp.concatenate([jnp.zeros((1,), cells.dtype), jnp.cumsum(cells)])
        target = jnp.asarray(uniform, cdf.dtype) * cdf[-1]
        j = jnp.clip(jnp.searchsorted(cdf, target, side="right") - 1, 0, self.num_points - 2)
        mass = jnp.maximum(cells[j], jnp.finfo(cells.dtype).tiny)
        t = jnp.clip(grid[j] + width * (target - cdf[j]) / mass, 0.0, 1.0)
        return t, cdf[-1] * width / mass


class LikelihoodWeightedTimes(AbstractContinuousTimeSampler):
    r"""Times importance-sampled by the likelihood weighting of VP with a linear $\beta$
    (Song et al. 2021; the MDM reference code samples the times of every MDM so): the
    density on the process's $[t_{\min}, 1]$ is proportional to
    $$\rho'(t) = \frac{\beta(t)}{1 - e^{-B(t)}}, \qquad \rho(t) = \log(e^{B(t)} - 1),$$
    with $\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})$ and $B(t) = \int_0^t \beta$.

    The CDF is inverted in closed form: $r = \rho(t_{\min}) + v\,(\rho(1) - \rho(t_{\min}))$,
    $B = \operatorname{softplus}(r)$, and $t$ the positive root of $B(t) = B$. The weight
    $w = (\rho(1) - \rho(t_{\min})) / ((1 - t_{\min})\,\rho'(t))$ is the reciprocal density of
    the unit time $(t - t_{\min}) / (1 - t_{\min})$, so $\mathbb E[w\,L] = \int_0^1 L$. The
    density grows as $1/t$ near 0, so the process must have $t_{\min} > 0$ (every MDM
    does). Continuous time only.

    **Arguments:** `beta_min`, `beta_max` (the MDM defaults, 0.1 and 10; pass the process's
    own), and `base`, the sampler of the uniform numbers (default `AntitheticTimes()`).
    """

    beta_min: float = eqx.field(default=0.1, static=True)
    beta_max: float = eqx.field(default=10.0, static=True)
    base: AbstractTimeSampler = AntitheticTimes()

    def __check_init__(self):
        if not 0.0 < self.beta_min <= self.beta_max:
            raise ValueError(
                f"LikelihoodWeightedTimes needs 0 < beta_min <= beta_max, got "
                f"beta_min={self.beta_min}, beta_max={self.beta_max}."
            )

    def uniforms(self, key: PRNGKeyArray, batch_size: int) -> Float[Array, " batch"]:
        return self.base.uniforms(key, batch_size)

    def log_weighting(self, t: Time) -> Float[Array, ""]:
        r"""$\rho(t) = \log(e^{B(t)} - 1)$, whose derivative is the density (unnormalised)."""
        return jnp.log(jnp.expm1(linear_beta_integral(self.beta_min, self.beta_max, t)))

    def __call__(
        self, process: AbstractLinearProcess, u0: State, uniform: Time
    ) -> tuple[Float[Array, ""], Float[Array, ""]]:
        t_min = process.t_min
        # A learned t_min (an array, maybe traced) is a sigmoid: positive by construction.
        if not isinstance(t_min, jax.Array) and t_min <= 0.0:
            raise ValueError(
                f"LikelihoodWeightedTimes needs a process with t_min > 0 (its density grows as "
                f"1/t at 0); {type(process).__name__} has t_min = {t_min}."
            )
        low, high = self.log_weighting(t_min), self.log_weighting(1.0)
        r = low + jnp.asarray(uniform, low.dtype) * (high - low)
        b = jax.nn.softplus(r)
        # The positive root of beta_min t + (beta_max - beta_min) t^2 / 2 = b, in the form
        # that neither cancels nor divides by beta_max - beta_min.
        root = jnp.sqrt(self.beta_min**2 + 2.0 * (self.beta_max - self.beta_min) * b)
        t = jnp.clip(2.0 * b / (self.beta_min + root), t_min, 1.0)
        beta = linear_beta(self.beta_min, self.beta_max, t)
        rate = beta / -jnp.expm1(-linear_beta_integral(self.beta_min, self.beta_max, t))
        unit = (t - t_min) / (1.0 - t_min)
        return unit, (high - low) / ((1.0 - t_min) * rate)


# The auxiliary draw has a stream of its own, so that every other draw of the bound is
# what it was before auxiliary state existed (with JAX's partitionable threefry,
# fold_in(key, i) equals split(key, n)[i], hence a large constant).
_AUXILIARY_STREAM = 0x4D754C41


def auxiliary_key(key: PRNGKeyArray) -> PRNGKeyArray:
    """The key of the draw $u_0 \\sim q(u_0 \\mid x)$ in the bounds of `key`."""
    return jax.random.split(jax.random.fold_in(key, _AUXILIARY_STREAM))[0]


def endpoint_terms(
    process: AbstractLinearGaussianProcess, u0: State, key: PRNGKeyArray, num_levels: int
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    r"""The terms of the bound that do not involve the network.

    **Returns:** `(reconstruction, prior)` in nats: the decoder's
    $-\log p(u_0 \mid z)$ at one draw $z \sim q(u_{t_{\min}} \mid u_0)$, and
    $\mathrm{KL}(q(u_1 \mid u_0) \Vert p(u_1))$.
    """
    # The first half of the split drew u_0 before auxiliary draws had their own stream.
    _, key_z = jax.random.split(key)
    z, _ = process.sample_marginal(key_z, u0, process.t_min)
    return process.decoder_nll(z, u0, num_levels), process.prior_kl(u0)


def assemble_nelbo(
    x: Data,
    reconstruction: Float[Array, ""],
    prior: Float[Array, ""],
    diffusion: Float[Array, ""],
    auxiliary: Float[Array, ""],
) -> NELBO:
    """The bound's terms in nats, converted to bits per dimension of `x`; `total` is
    their sum."""
    to_bpd = 1.0 / (x.size * math.log(2.0))
    diffusion, prior, reconstruction, auxiliary = (
        term * to_bpd for term in (diffusion, prior, reconstruction, auxiliary)
    )
    total = diffusion + prior + reconstruction + auxiliary
    return NELBO(total, diffusion, prior, reconstruction, auxiliary)


def nelbo(
    process: AbstractLinearGaussianProcess,
    model: Callable[[State, Time], Noise],
    x: Data,
    *,
    key: PRNGKeyArray,
    num_levels: int = 256,
    parameterization: str | AbstractParameterization = "eps",
    num_steps: int | None = None,
    times: AbstractTimeSampler = UniformTimes(),
    uniform: Time | None = None,
) -> NELBO:
    r"""A one-sample estimate of the negative ELBO of one example, in bits/dim.

    **Arguments:**

    - `process`: the forward process (any linear-Gaussian process).
    - `model`: the network, `model(u_t, t)`; predicts $\varepsilon$ unless
      `parameterization` says otherwise (for a state that is not the data, adapt an
      array network with `process.denoiser(net)`).
    - `x`: one example on the grid of bin centres $-1 + (2k + 1)/L$. Called eagerly, data
      that are off the grid, outside $[-1, 1]$ or non-finite raise a `ValueError`; under
      `jit`/`vmap` nothing is checked here (see `batch_nelbo` and `ad.check_discrete`).
    - `key`: PRNG key for the auxiliary state, $t$, the noise and the decoder sample.
    - `num_levels`: the number of levels $L$ of the data (256 for 8-bit images).
    - `parameterization`: `"eps"`, `"x"`, `"v"`, `"score"` or an object.
    - `num_steps`: `None` for the continuous-time bound, or $T$ for the $T$-step one.
    - `times`: the time sampler; `ArcLengthTimes()` importance-weights the diffusion term.
    - `uniform`: the uniform number in $[0, 1)$ that `times` maps to the diffusion time
      (for `UniformTimes` and `AntitheticTimes`, the unit time itself); drawn when `None`.
      `batch_nelbo` passes low-discrepancy ones.

    **Returns:** `NELBO(total, diffusion, prior, reconstruction, auxiliary)`, scalars in
    bits/dim.
    """
    require_capability(process, AbstractLinearGaussianProcess, "nelbo")
    check_discrete_eagerly(x, num_levels)
    parameterization = as_parameterization(parameterization)
    key_ends, key_t, key_noise = jax.random.split(key, 3)
    draw = process.initial_state(auxiliary_key(key), x)
    u0 = draw.state
    reconstruction, prior = endpoint_terms(process, u0, key_ends, num_levels)
    if uniform is None:
        uniform = jax.random.uniform(key_t)
    span = 1.0 - process.t_min
    if num_steps is None:
        unit, weight = times(process, u0, uniform)
    else:
        unit, weight = times.on_grid(process, u0, uniform, num_steps)
    t = unit_to_time(process, unit)
    u_t, eps = process.sample_marginal(key_noise, u0, t)
    eps_hat = parameterization.to_eps(process, model(u_t, t), u_t, t)
    if num_steps is None:
        diffusion = span * weight * process.diffusion_loss(u0, t, eps, eps_hat)
    else:
        s = unit_to_time(process, unit - 1.0 / num_steps)
        kl = process.diffusion_loss_discrete(u0, s, t, eps, eps_hat)
        diffusion = num_steps * weight * kl
    return assemble_nelbo(x, reconstruction, prior, diffusion, draw.kl)


def denoising_loss(
    process: AbstractLinearProcess,
    model: Callable[[State, Time], Noise],
    x: Data,
    *,
    key: PRNGKeyArray,
    parameterization: str | AbstractParameterization = "eps",
    times: AbstractTimeSampler = UniformTimes(),
    uniform: Time | None = None,
) -> Float[Array, ""]:
    r"""The noise-prediction loss of one example (Ho et al. 2020's $L_{\text{simple}}$):
    $\frac1n \lVert n - \hat n(u_t, t)\rVert^2$ over the $n$ elements of the diffused
    part, with $u_0 \sim q(u_0 \mid x)$, $t$ from `times` (times its weight) and
    $u_t = A_t u_0 + L_t n$ for noise $n$ of the process's own family.

    The training objective of a process without a variational bound (DDPM with
    non-Gaussian noise); for a Gaussian process it is the bound's diffusion term without
    its $\gamma'(t)$ weighting. Unitless (the noise has unit variance), not bits/dim.

    **Arguments:** `process` (any linear process), `model`, `x`, `key`,
    `parameterization` and `uniform` as `nelbo`; `times`: the time sampler
    (`StepTimes(T)` for DDPM's uniform steps).
    """
    require_capability(process, AbstractLinearProcess, "denoising_loss")
    parameterization = as_parameterization(parameterization)
    key_t, key_noise = jax.random.split(key)
    u0 = process.initial_state(auxiliary_key(key), x).state
    if uniform is None:
        uniform = jax.random.uniform(key_t)
    unit, weight = times(process, u0, uniform)
    t = unit_to_time(process, unit)
    u_t, eps = process.sample_marginal(key_noise, u0, t)
    eps_hat = parameterization.to_eps(process, model(u_t, t), u_t, t)
    return weight * jnp.mean(jnp.square(eps - eps_hat))


def batch_bound(
    bound: Callable[[Data, PRNGKeyArray, Float[Array, ""]], _Out],
    xs: Float[Array, " batch *shape"],
    *,
    key: PRNGKeyArray,
    times: AbstractTimeSampler = AntitheticTimes(),
) -> _Out:
    """A per-example bound or loss over a batch: `bound(x, key, uniform)` under `vmap`,
    each example with its own key and uniform number from `times.uniforms` (VDM's
    low-discrepancy times by default); each leaf of the result (each field of a `NELBO`)
    has shape `(batch,)`.

    The one place the batch's keys are split, so every batched objective (`batch_nelbo`,
    the training model's `nelbo` and `denoising`) uses them alike.
    """
    key_t, key_rest = jax.random.split(key)
    uniforms = times.uniforms(key_t, xs.shape[0])
    keys = jax.random.split(key_rest, xs.shape[0])
    return jax.vmap(bound)(xs, keys, uniforms)


def batch_nelbo(
    process: AbstractLinearGaussianProcess,
    model: Callable[[State, Time], Noise],
    xs: Float[Array, " batch *shape"],
    *,
    key: PRNGKeyArray,
    num_levels: int = 256,
    parameterization: str | AbstractParameterization = "eps",
    num_steps: int | None = None,
    times: AbstractTimeSampler = AntitheticTimes(),
) -> NELBO:
    """`nelbo` over a batch with low-discrepancy times; each field has shape `(batch,)`.

    Arguments as `nelbo`, with `xs` a batch of examples (leading axis). The batch is
    checked once with `ad.check_discrete` (also under `jit`), outside the vmapped bound.
    """
    xs = check_discrete(xs, num_levels)

    def one(x, k, uniform):
        return nelbo(
            process,
            model,
            x,
            key=k,
            num_levels=num_levels,
            parameterization=parameterization,
            num_steps=num_steps,
            times=times,
            uniform=uniform,
        )

    return batch_bound(one, xs, key=key, times=times)
