r"""Noise schedules as the negative log signal-to-noise ratio $\gamma(t)$.

A schedule is an `eqx.Module` callable as `schedule(t) -> gamma` for a scalar time
$t \in [0, 1]$; $\gamma$ increases with $t$. The variance-preserving coefficients
follow VDM (Kingma et al. 2021, eq. 3):

$$\alpha_t^2 = \operatorname{sigmoid}(-\gamma(t)), \qquad
\sigma_t^2 = \operatorname{sigmoid}(\gamma(t)), \qquad
\mathrm{SNR}(t) = \alpha_t^2 / \sigma_t^2 = e^{-\gamma(t)}.$$

A schedule may return a scalar or one $\gamma$ per data dimension (MuLAN's per-pixel
schedules); every function here broadcasts. Time derivatives come from `jax.jvp`
(`gamma_and_derivative`), never from finite differences.
"""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._custom_types import Gamma, Time


class AbstractSchedule(eqx.Module):
    r"""A log-SNR schedule $t \mapsto \gamma(t)$, increasing in $t \in [0, 1]$."""

    @abc.abstractmethod
    def __call__(self, t: Time) -> Gamma:
        r"""**Arguments:** `t`, a scalar time in `[0, 1]`.

        **Returns:** $\gamma(t)$: a scalar, or an array of per-dimension values.
        """


def gamma_and_derivative(schedule: AbstractSchedule, t: Time) -> tuple[Gamma, Gamma]:
    r"""$\gamma(t)$ and $\gamma'(t) = d\gamma / dt$ by forward-mode differentiation.

    **Arguments:**

    - `schedule`: any schedule, scalar or per-dimension.
    - `t`: a scalar time.

    **Returns:** `(gamma, dgamma_dt)`, each shaped like `schedule(t)`.
    """
    t = jnp.asarray(t, dtype=jnp.result_type(float))
    return jax.jvp(schedule, (t,), (jnp.ones_like(t),))


def alpha_sigma(gamma: Gamma) -> tuple[Gamma, Gamma]:
    r"""$(\alpha, \sigma) = (\sqrt{\operatorname{sigmoid}(-\gamma)},
    \sqrt{\operatorname{sigmoid}(\gamma)})$, computed stably for large $|\gamma|$."""
    return jnp.sqrt(jax.nn.sigmoid(-gamma)), jnp.sqrt(jax.nn.sigmoid(gamma))


def _check_endpoints(name: str, gamma_min: float, gamma_max: float):
    if not gamma_min < gamma_max:
        raise ValueError(f"{name} needs gamma_min < gamma_max, got {gamma_min} and {gamma_max}.")


class LinearSchedule(AbstractSchedule):
    r"""$\gamma(t) = \gamma_{\min} + (\gamma_{\max} - \gamma_{\min})\, t$ (VDM's fixed schedule).

    **Arguments:** `gamma_min`, `gamma_max`: the log-SNR endpoints; VDM uses
    $-13.3$ and $5.0$ ($\sigma_0 \approx 1.3 \cdot 10^{-3}$, $\alpha_1 \approx 0.08$).
    """

    gamma_min: float = -13.3
    gamma_max: float = 5.0

    def __check_init__(self):
        _check_endpoints(type(self).__name__, self.gamma_min, self.gamma_max)

    def __call__(self, t: Time) -> Float[Array, ""]:
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        return self.gamma_min + (self.gamma_max - self.gamma_min) * t


class CosineSchedule(AbstractSchedule):
    r"""The log-SNR of the cosine schedule, clipped to $[\gamma_{\min}, \gamma_{\max}]$.

    The cosine schedule (Nichol & Dhariwal 2021, in its continuous form) has
    $\alpha_t = \cos(\pi t / 2)$, $\sigma_t = \sin(\pi t / 2)$, hence
    $\gamma(t) = 2 \log \tan(\pi t / 2)$, which runs from $-\infty$ to $+\infty$.
    Clipping is done on $t$, to $[t_{\min}, t_{\max}]$ with
    $t_{\min/\max} = \tfrac{2}{\pi} \arctan e^{\gamma_{\min/\max} / 2}$: the value is the
    clipped log-SNR exactly, and its derivative is finite everywhere (zero where clipped).

    **Arguments:** `gamma_min`, `gamma_max`: the clipping range (defaults as VDM).
    """

    gamma_min: float = -13.3
    gamma_max: float = 5.0

    def __check_init__(self):
        _check_endpoints(type(self).__name__, self.gamma_min, self.gamma_max)

    def __call__(self, t: Time) -> Float[Array, ""]:
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        t_min = 2 / math.pi * math.atan(math.exp(self.gamma_min / 2))
        t_max = 2 / math.pi * math.atan(math.exp(self.gamma_max / 2))
        t = jnp.clip(t, t_min, t_max)
        return 2 * jnp.log(jnp.tan(0.5 * math.pi * t))


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class LearnedSchedule(AbstractSchedule):
    r"""VDM's learned monotone schedule with learnable endpoints that it really attains.

    An unnormalised monotone network (Kingma et al. 2021, appendix H)
    $$\tilde\gamma(t) = l_1(t) + l_3(\operatorname{sigmoid}(l_2(l_1(t))))$$
    with positive weights (made positive by `softplus`) in all three affine layers
    is increasing in $t$. It is rescaled to the endpoints,
    $$\gamma(t) = \gamma_0 + (\gamma_1 - \gamma_0)
    \frac{\tilde\gamma(t) - \tilde\gamma(0)}{\tilde\gamma(1) - \tilde\gamma(0)},$$
    so $\gamma(0) = \gamma_0$ and $\gamma(1) = \gamma_1$ hold exactly. Both endpoints
    are parameters; $\gamma_1 = \gamma_0 + \operatorname{softplus}(\delta)$ keeps
    $\gamma_1 > \gamma_0$. (VDM's own code rescales to learned endpoints in the paper but
    not in the released model: google-research/vdm issue 11.)

    **Arguments:**

    - `key`: PRNG key for the initial weights.
    - `gamma_min`, `gamma_max`: initial endpoints $\gamma_0$, $\gamma_1$.
    - `hidden`: width of the sigmoid layer (VDM: 1024).
    """

    gamma_0: Float[Array, ""]
    raw_width: Float[Array, ""]
    w1: Float[Array, ""]
    b1: Float[Array, ""]
    w2: Float[Array, " hidden"]
    b2: Float[Array, " hidden"]
    w3: Float[Array, " hidden"]

    def __init__(
        self,
        *,
        key: PRNGKeyArray,
        gamma_min: float = -13.3,
        gamma_max: float = 5.0,
        hidden: int = 1024,
    ):
        _check_endpoints(type(self).__name__, gamma_min, gamma_max)
        k2, k3 = jax.random.split(key)
        self.gamma_0 = jnp.asarray(gamma_min, dtype=float)
        self.raw_width = jnp.asarray(_inverse_softplus(gamma_max - gamma_min), dtype=float)
        # Initial weights give a near-linear gamma, as VDM's initialisation does.
        self.w1 = jnp.asarray(_inverse_softplus(1.0), dtype=float)
        self.b1 = jnp.zeros(())
        self.w2 = jax.random.normal(k2, (hidden,)) - 2.0
        self.b2 = jnp.zeros((hidden,))
        self.w3 = jax.random.normal(k3, (hidden,)) - 2.0 - math.log(hidden)

    def _unnormalised(self, t: Float[Array, ""]) -> Float[Array, ""]:
        h = jax.nn.softplus(self.w1) * t + self.b1
        s = jax.nn.sigmoid(jax.nn.softplus(self.w2) * h + self.b2)
        return h + jnp.dot(jax.nn.softplus(self.w3), s)

    @property
    def gamma_1(self) -> Float[Array, ""]:
        r"""The endpoint $\gamma(1) = \gamma_0 + \operatorname{softplus}(\delta)$."""
        return self.gamma_0 + jax.nn.softplus(self.raw_width)

    def __call__(self, t: Time) -> Float[Array, ""]:
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        g_t = self._unnormalised(t)
        g_0 = self._unnormalised(jnp.zeros_like(t))
        g_1 = self._unnormalised(jnp.ones_like(t))
        return self.gamma_0 + (self.gamma_1 - self.gamma_0) * (g_t - g_0) / (g_1 - g_0)
