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

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._custom_types import Data, State, Time
from ._discrete import check_discrete
from ._parameterizations import AbstractParameterization, as_parameterization
from ._processes import AbstractProcess


class NELBO(eqx.Module):
    """The negative ELBO and its terms, in bits per dimension (per example, or batched)."""

    total: Float[Array, "*batch"]
    diffusion: Float[Array, "*batch"]
    prior: Float[Array, "*batch"]
    reconstruction: Float[Array, "*batch"]


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
    key_t, key_rest = jax.random.split(key)
    times = antithetic_times(key_t, xs.shape[0])
    keys = jax.random.split(key_rest, xs.shape[0])

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

    return jax.vmap(one)(xs, keys, times)
