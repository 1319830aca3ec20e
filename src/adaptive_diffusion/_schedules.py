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
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

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


def linear_beta(beta_min: float, beta_max: float, t: Time) -> Float[Array, ""]:
    r"""The linear noise rate $\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})$ of
    score_sde's VP SDE and of the MDMs."""
    return beta_min + jnp.asarray(t, dtype=jnp.result_type(float)) * (beta_max - beta_min)


def linear_beta_integral(beta_min: float, beta_max: float, t: Time) -> Float[Array, ""]:
    r"""$B(t) = \int_0^t \beta = \beta_{\min} t + \tfrac12(\beta_{\max} - \beta_{\min}) t^2$."""
    t = jnp.asarray(t, dtype=jnp.result_type(float))
    return beta_min * t + 0.5 * (beta_max - beta_min) * t**2


def _check_endpoints(name: str, gamma_min: Float[ArrayLike, ""], gamma_max: Float[ArrayLike, ""]):
    """Refuse `gamma_min >= gamma_max` given as numbers; learned endpoints (arrays, maybe
    traced) are ordered by construction (`LearnedEndpoints`)."""
    if isinstance(gamma_min, int | float) and isinstance(gamma_max, int | float):
        if not gamma_min < gamma_max:
            raise ValueError(
                f"{name} needs gamma_min < gamma_max, got {gamma_min} and {gamma_max}."
            )


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


class FixedEndpoints(eqx.Module):
    r"""The endpoints $\gamma(0) = \gamma_{\min}$, $\gamma(1) = \gamma_{\max}$ of a schedule,
    fixed (static numbers, never trained). `endpoints()` returns them."""

    gamma_min: float = eqx.field(static=True)
    gamma_max: float = eqx.field(static=True)

    def __check_init__(self):
        _check_endpoints(type(self).__name__, self.gamma_min, self.gamma_max)

    def __call__(self) -> tuple[float, float]:
        return self.gamma_min, self.gamma_max


class LearnedEndpoints(eqx.Module):
    r"""Learnable endpoints $\gamma_0 < \gamma_1$ of a schedule, shared by every dimension:
    $\gamma_0$ is a parameter and $\gamma_1 = \gamma_0 + \operatorname{softplus}(\delta)$,
    so the order holds for any parameters. `endpoints()` returns $(\gamma_0, \gamma_1)$.

    **Arguments:** `gamma_min`, `gamma_max`: the initial endpoints.
    """

    gamma_0: Float[Array, ""]
    raw_width: Float[Array, ""]

    def __init__(self, gamma_min: float, gamma_max: float):
        _check_endpoints(type(self).__name__, gamma_min, gamma_max)
        self.gamma_0 = jnp.asarray(gamma_min, dtype=float)
        self.raw_width = jnp.asarray(_inverse_softplus(gamma_max - gamma_min), dtype=float)

    @property
    def gamma_1(self) -> Float[Array, ""]:
        r"""$\gamma_1 = \gamma_0 + \operatorname{softplus}(\delta)$."""
        return self.gamma_0 + jax.nn.softplus(self.raw_width)

    def __call__(self) -> tuple[Float[Array, ""], Float[Array, ""]]:
        return self.gamma_0, self.gamma_1


Endpoints = FixedEndpoints | LearnedEndpoints


def make_endpoints(gamma_min: float, gamma_max: float, learned: bool) -> Endpoints:
    """`LearnedEndpoints(gamma_min, gamma_max)` if `learned`, else `FixedEndpoints`."""
    return (LearnedEndpoints if learned else FixedEndpoints)(gamma_min, gamma_max)


class LearnedSchedule(AbstractSchedule):
    r"""VDM's learned monotone schedule with learnable endpoints that it really attains.

    An unnormalised monotone network (Kingma et al. 2021, appendix H)
    $$\tilde\gamma(t) = l_1(t) + l_3(\operatorname{sigmoid}(l_2(l_1(t))))$$
    with positive weights (made positive by `softplus`) in all three affine layers
    is increasing in $t$. It is rescaled to the endpoints,
    $$\gamma(t) = \gamma_0 + (\gamma_1 - \gamma_0)
    \frac{\tilde\gamma(t) - \tilde\gamma(0)}{\tilde\gamma(1) - \tilde\gamma(0)},$$
    so $\gamma(0) = \gamma_0$ and $\gamma(1) = \gamma_1$ hold exactly. Both endpoints
    are parameters (`LearnedEndpoints`: $\gamma_1 = \gamma_0 + \operatorname{softplus}(\delta)$
    keeps $\gamma_1 > \gamma_0$) unless `learn_endpoints=False`. (VDM's own code rescales
    to learned endpoints in the paper but not in the released model: google-research/vdm
    issue 11.)

    **Arguments:**

    - `key`: PRNG key for the initial weights.
    - `gamma_min`, `gamma_max`: initial endpoints $\gamma_0$, $\gamma_1$.
    - `hidden`: width of the sigmoid layer (VDM: 1024).
    - `learn_endpoints`: learn the endpoints (VDM; the default) or keep them fixed.
    """

    endpoints: Endpoints
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
        learn_endpoints: bool = True,
    ):
        k2, k3 = jax.random.split(key)
        self.endpoints = make_endpoints(gamma_min, gamma_max, learn_endpoints)
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
    def gamma_0(self) -> Float[Array, ""] | float:
        r"""The endpoint $\gamma(0)$."""
        return self.endpoints()[0]

    @property
    def gamma_1(self) -> Float[Array, ""] | float:
        r"""The endpoint $\gamma(1)$."""
        return self.endpoints()[1]

    def __call__(self, t: Time) -> Float[Array, ""]:
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        g_t = self._unnormalised(t)
        g_0 = self._unnormalised(jnp.zeros_like(t))
        g_1 = self._unnormalised(jnp.ones_like(t))
        gamma_0, gamma_1 = self.endpoints()
        return gamma_0 + (gamma_1 - gamma_0) * (g_t - g_0) / (g_1 - g_0)


def _lerp_endpoints(
    r: Gamma, gamma_min: Float[Array, ""] | float, gamma_max: Float[Array, ""] | float
) -> Gamma:
    r"""$\gamma_{\min}(1 - r) + \gamma_{\max} r$: exactly $\gamma_{\min}$ at $r = 0$ and
    exactly $\gamma_{\max}$ at $r = 1$ in floating point, and non-decreasing in $r$."""
    return gamma_min * (1.0 - r) + gamma_max * r


# Gauss-Legendre nodes and weights on [0, 1]; three nodes integrate degree 5 exactly.
_GAUSS_LEGENDRE_3 = (
    (0.5 - 0.5 * math.sqrt(0.6), 5.0 / 18.0),
    (0.5, 8.0 / 18.0),
    (0.5 + 0.5 * math.sqrt(0.6), 5.0 / 18.0),
)


def _integral_of_square(
    a: Gamma, b: Gamma, c: Gamma, t0: Float[Array, ""], t1: Float[Array, ""]
) -> Gamma:
    r"""$\int_{t_0}^{t_1} (a s^2 + b s + c)^2\,ds$ by three-point Gauss-Legendre quadrature,
    exact for this degree-4 integrand; a sum of non-negative terms (no cancellation), and
    exactly zero when $t_0 = t_1$."""
    width = t1 - t0
    total = jnp.zeros(jnp.broadcast_shapes(a.shape, b.shape, c.shape), a.dtype)
    for node, weight in _GAUSS_LEGENDRE_3:
        s = t0 + node * width
        total = total + weight * jnp.square((a * s + b) * s + c)
    return width * total


@jax.custom_jvp
def _monotone_integral(
    a: Gamma, b: Gamma, c: Gamma, t0: Float[Array, ""], t1: Float[Array, ""]
) -> Gamma:
    """`_integral_of_square`, whose derivatives in the limits are exactly the integrand
    there, `+q(t1)^2` and `-q(t0)^2` (squares, so never of the wrong sign by rounding)."""
    return _integral_of_square(a, b, c, t0, t1)


def _monotone_integral_jvp(primals, tangents):
    a, b, c, t0, t1 = primals
    da, db, dc, dt0, dt1 = tangents
    coefficients = (a, b, c)
    if all(isinstance(d, jax.custom_derivatives.SymbolicZero) for d in (da, db, dc)):
        # Only time moves (gamma'(t) in the SDE and the loss): skip the coefficients' jvp.
        value = _integral_of_square(a, b, c, t0, t1)
        d_value = jnp.zeros_like(value)
    else:
        tangents = tuple(
            jnp.zeros_like(p) if isinstance(d, jax.custom_derivatives.SymbolicZero) else d
            for p, d in zip(coefficients, (da, db, dc))
        )
        value, d_value = jax.jvp(
            lambda a, b, c: _integral_of_square(a, b, c, t0, t1), coefficients, tangents
        )
    for t, dt, sign in ((t1, dt1, 1.0), (t0, dt0, -1.0)):
        if not isinstance(dt, jax.custom_derivatives.SymbolicZero):
            d_value = d_value + sign * jnp.square((a * t + b) * t + c) * dt
    return value, d_value


_monotone_integral.defjvp(_monotone_integral_jvp, symbolic_zeros=True)


class PolynomialSchedule(AbstractSchedule):
    r"""MuLAN's per-dimension polynomial schedule (Sahoo et al. 2024, section 3.3).

    With per-dimension coefficients $a, b, c$ (each shaped like the data),
    $$\gamma(t) = \gamma_{\min} + (\gamma_{\max} - \gamma_{\min}) \frac{P(t)}{P(1)},
    \qquad P(t) = \int_0^t (a s^2 + b s + c)^2\,ds
    = \tfrac{a^2}{5} t^5 + \tfrac{ab}{2} t^4 + \tfrac{b^2 + 2ac}{3} t^3 + bc\,t^2 + c^2 t,$$
    a degree-5 polynomial with $\gamma'(t) = (\gamma_{\max} - \gamma_{\min})
    (a t^2 + b t + c)^2 / P(1) \ge 0$: monotone by construction, and running from exactly
    $\gamma_{\min}$ at $t = 0$ to exactly $\gamma_{\max}$ at $t = 1$ in every dimension.
    In floating point: the ratio is computed as $P(t) / (P(t) + Q(t))$ with
    $Q(t) = \int_t^1$, each by exact three-point Gauss-Legendre quadrature (a sum of
    squares times the interval's length), so it is exactly 0 at $t = 0$ and exactly 1 at
    $t = 1$ however the computation is compiled; the time derivatives of $P$ and $Q$ are
    defined to be $\pm(a t^2 + b t + c)^2$, so $\gamma'$ is a square over $P + Q$, never
    negative by rounding (a negative $\gamma'$ would make the SDE's diffusion
    $\sqrt{\sigma^2 \gamma'}$ NaN). The values are non-decreasing up to a few ulp where
    $\gamma'$ is near zero.

    **Arguments:**

    - `a`, `b`, `c`: the coefficients, one per data dimension; $c \neq 0$ (MuLAN's network
      gives $c = 10^{-3} + \operatorname{softplus}(\cdot)$) keeps $P(1) > 0$.
    - `gamma_min`, `gamma_max`: the endpoints, numbers or (learned) scalar arrays.
    """

    a: Float[Array, "*shape"]
    b: Float[Array, "*shape"]
    c: Float[Array, "*shape"]
    gamma_min: Float[Array, ""] | float = -13.3
    gamma_max: Float[Array, ""] | float = 5.0

    def __check_init__(self):
        _check_endpoints(type(self).__name__, self.gamma_min, self.gamma_max)

    def __call__(self, t: Time) -> Float[Array, "*shape"]:
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        before = _monotone_integral(self.a, self.b, self.c, jnp.zeros_like(t), t)
        after = _monotone_integral(self.a, self.b, self.c, t, jnp.ones_like(t))
        return _lerp_endpoints(before / (before + after), self.gamma_min, self.gamma_max)


class AbstractLatentSchedule(eqx.Module):
    r"""A family of schedules indexed by a latent $z$: `family(z)` is a schedule
    $t \mapsto \gamma(z, t)$, one value per data dimension (MuLAN's schedule network)."""

    @abc.abstractmethod
    def __call__(self, z: Float[Array, " latent"]) -> AbstractSchedule:
        """**Arguments:** `z`, one latent vector. **Returns:** the schedule for `z`."""


class FixedLatentSchedule(AbstractLatentSchedule):
    r"""The same schedule for every latent: MuLAN reduced to a fixed (e.g. VDM's linear)
    schedule, for ablations and for checking MuLAN against VDM.

    **Arguments:** `schedule`, any schedule (scalar ones broadcast over the data).
    """

    schedule: AbstractSchedule

    def __call__(self, z: Float[Array, " latent"]) -> AbstractSchedule:
        del z
        return self.schedule


class PolynomialScheduleNetwork(AbstractLatentSchedule):
    r"""MuLAN's schedule network: $z \mapsto$ a `PolynomialSchedule` per latent.

    A two-hidden-layer SiLU MLP maps $[z, 1]$ to $3D$ numbers, read as $a$, $b$ and
    $c = 10^{-3} + \operatorname{softplus}(\cdot)$, each shaped like the data
    (the reference's `NoiseSchedule_polynomial_fixedend`, whose hidden layers have $D$
    units). The head of $a$ starts at zero, as in the reference, so an untrained
    schedule has $\gamma' \propto (b t + c)^2$. The constant input 1 lets the network run
    without a latent (`NoLatent`: a learned, unconditional per-pixel schedule).

    **Arguments:**

    - `latent_size`: the length of $z$.
    - `data_shape`: the shape of one example.
    - `key`: PRNG key for the initial weights.
    - `gamma_min`, `gamma_max`: the endpoints every dimension's schedule runs between
      (the initial ones, if learned).
    - `width`: the hidden width; `None` for $D$, the reference's choice.
    - `learn_endpoints`: learn the endpoints (`LearnedEndpoints`, shared by every
      dimension and latent, as VDM learns its scalar schedule's), a departure from the
      reference's `poly_fixedend`; `False` (the default) keeps them fixed, as the paper.
    """

    hidden1: eqx.nn.Linear
    hidden2: eqx.nn.Linear
    head: eqx.nn.Linear
    endpoints: Endpoints
    data_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        latent_size: int,
        data_shape: tuple[int, ...],
        *,
        key: PRNGKeyArray,
        gamma_min: float = -13.3,
        gamma_max: float = 5.0,
        width: int | None = None,
        learn_endpoints: bool = False,
    ):
        self.endpoints = make_endpoints(gamma_min, gamma_max, learn_endpoints)
        self.data_shape = tuple(int(d) for d in data_shape)
        size = math.prod(self.data_shape)
        width = size if width is None else width
        k1, k2, k3 = jax.random.split(key, 3)
        self.hidden1 = eqx.nn.Linear(latent_size + 1, width, key=k1)
        self.hidden2 = eqx.nn.Linear(width, width, key=k2)
        self.head = eqx.tree_at(
            lambda m: (m.weight, m.bias),
            eqx.nn.Linear(width, 3 * size, key=k3),
            replace_fn=lambda w: w.at[:size].set(0.0),  # the rows of `a`
        )

    def __call__(self, z: Float[Array, " latent"]) -> PolynomialSchedule:
        h = jax.nn.silu(self.hidden1(jnp.concatenate([z, jnp.ones((1,), z.dtype)])))
        h = jax.nn.silu(self.hidden2(h))
        a, b, raw_c = jnp.split(self.head(h), 3)
        a, b, raw_c = (v.reshape(self.data_shape) for v in (a, b, raw_c))
        c = 1e-3 + jax.nn.softplus(raw_c)
        return PolynomialSchedule(a, b, c, *self.endpoints())


class MonotoneNetSchedule(AbstractSchedule):
    r"""The per-latent schedule of `MonotoneScheduleNetwork`: per dimension $i$,
    $$\tilde\gamma_i(t) = \operatorname{softplus}(l_i)\,t + \sum_j
    \operatorname{softplus}(W_{ij})\,\operatorname{sigmoid}(\operatorname{softplus}(w_j)\,t
    + h_j),$$
    increasing in $t$, rescaled to run from $\gamma_{\min}$ to $\gamma_{\max}$ (as
    `LearnedSchedule` is: exactly in exact arithmetic, to rounding in floating point).
    $h$ carries the latent; built by `MonotoneScheduleNetwork`, not by hand.
    """

    raw_linear: Float[Array, " dims"]
    raw_out: Float[Array, "dims hidden"]
    raw_time: Float[Array, " hidden"]
    hidden_bias: Float[Array, " hidden"]
    gamma_min: Float[Array, ""] | float
    gamma_max: Float[Array, ""] | float
    data_shape: tuple[int, ...] = eqx.field(static=True)

    def _unnormalised(self, t: Float[Array, ""]) -> Float[Array, " dims"]:
        h = jax.nn.sigmoid(jax.nn.softplus(self.raw_time) * t + self.hidden_bias)
        return jax.nn.softplus(self.raw_linear) * t + jax.nn.softplus(self.raw_out) @ h

    def __call__(self, t: Time) -> Float[Array, "*shape"]:
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        g_0 = self._unnormalised(jnp.zeros_like(t))
        g_1 = self._unnormalised(jnp.ones_like(t))
        ratio = (self._unnormalised(t) - g_0) / (g_1 - g_0)
        return _lerp_endpoints(ratio, self.gamma_min, self.gamma_max).reshape(self.data_shape)


class MonotoneScheduleNetwork(AbstractLatentSchedule):
    r"""VDM's monotone network made per-dimension and conditioned on $z$: the schedule
    family MuLAN's ablations compare the polynomial with (the reference's
    `NoiseSchedule_NNet`).

    $z$ enters only through the biases $h = A z + b$ of the sigmoid layer, whose weights on
    $t$ are positive, as are the output weights: every $\gamma_i(z, \cdot)$ is increasing
    for any $z$ and any weights, and is rescaled to run from $\gamma_{\min}$ to
    $\gamma_{\max}$ (see `MonotoneNetSchedule`). (The reference feeds $[z, t]$ through
    positive weights, which makes $\gamma$ monotone in $z$ as well and leaves the endpoints
    free.) The initial weights give a near-linear schedule, as `LearnedSchedule`'s do.

    **Arguments:**

    - `latent_size`: the length of $z$.
    - `data_shape`: the shape of one example.
    - `key`: PRNG key for the initial weights.
    - `gamma_min`, `gamma_max`: the endpoints (the initial ones, if learned).
    - `hidden`: the width of the sigmoid layer.
    - `learn_endpoints`: learn the endpoints, shared by every dimension and latent
      (`LearnedEndpoints`); `False` (the default) keeps them fixed.
    """

    raw_linear: Float[Array, " dims"]
    raw_out: Float[Array, "dims hidden"]
    raw_time: Float[Array, " hidden"]
    latent_weight: Float[Array, "hidden latent"]
    bias: Float[Array, " hidden"]
    endpoints: Endpoints
    data_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        latent_size: int,
        data_shape: tuple[int, ...],
        *,
        key: PRNGKeyArray,
        gamma_min: float = -13.3,
        gamma_max: float = 5.0,
        hidden: int = 128,
        learn_endpoints: bool = False,
    ):
        self.endpoints = make_endpoints(gamma_min, gamma_max, learn_endpoints)
        self.data_shape = tuple(int(d) for d in data_shape)
        size = math.prod(self.data_shape)
        k_out, k_time, k_latent = jax.random.split(key, 3)
        self.raw_linear = jnp.full((size,), _inverse_softplus(1.0))
        self.raw_out = jax.random.normal(k_out, (size, hidden)) - 2.0 - math.log(hidden)
        self.raw_time = jax.random.normal(k_time, (hidden,))
        self.latent_weight = jax.random.normal(k_latent, (hidden, latent_size)) / math.sqrt(
            max(latent_size, 1)
        )
        self.bias = jnp.zeros((hidden,))

    def __call__(self, z: Float[Array, " latent"]) -> MonotoneNetSchedule:
        return MonotoneNetSchedule(
            self.raw_linear,
            self.raw_out,
            self.raw_time,
            self.latent_weight @ z + self.bias,
            *self.endpoints(),
            self.data_shape,
        )


class BetaSchedule(AbstractSchedule):
    r"""DDPM's betas as a log-SNR schedule: the discrete-time (NI-)DDPM in continuous time.

    For $\beta_1, \dots, \beta_T$ and $\bar\alpha_i = \prod_{j \le i}(1 - \beta_j)$, DDPM's
    $q(x_i \mid x_0) = \mathcal N(\sqrt{\bar\alpha_i}\,x_0, (1 - \bar\alpha_i)\Sigma)$
    (NI-DDPM's eq. 10; $\Sigma = I$ for DDPM) is `NonIsotropicVP` (or `VP`) with this
    schedule: the latents $x_1, \dots, x_T$ sit at $t_i = (i - 1)/(T - 1)$ with
    $$\gamma(t_i) = \log\frac{1 - \bar\alpha_i}{\bar\alpha_i}, \qquad
    \alpha_{t_i}^2 = \bar\alpha_i,$$
    and $\gamma$ is linear in between. DDPM's $x_0$ is the data itself
    ($\bar\alpha_0 = 1$, $\gamma = -\infty$), not a latent, so every $\gamma$ here is finite:

    - `sample_ancestral(..., num_steps=T - 1, denoise=True)` is NI-DDPM's eq. 18 exactly.
      The step $t_i \to t_{i-1}$ has $c = 1 - \mathrm{SNR}_{t_i}/\mathrm{SNR}_{t_{i-1}} =
      \beta_i/(1 - \bar\alpha_i)$, hence mean $(x_i - \beta_i (1 - \bar\alpha_i)^{-1/2}
      \Sigma^{1/2}\hat\varepsilon)/\sqrt{1 - \beta_i}$ and variance
      $(1 - \bar\alpha_{i-1})\,c = \tilde\beta_i$; the final denoising step is eq. 18 at
      $i = 1$, where $\tilde\beta_1 = 0$ and the mean is $\hat x_0$ (eq. 23).
      `variance="beta"` gives eq. 19, `sample_ddim(..., num_steps=T - 1, denoise=True)`
      eqs. 20-21.
    - `nelbo(..., num_steps=T - 1)` is DDPM's bound: the prior term at $x_T$, the
      $T - 1$ KL terms, and VDM's discretised decoder at $x_1$ as $L_0$.
    - The continuous-time bound, `ode_log_likelihood` and `sample_sde` see the VP SDE
      with piecewise-constant $\gamma'(t)$.

    **Arguments:** `betas`: $\beta_1, \dots, \beta_T$, each in $(0, 1)$, $T \ge 2$
    (Ho et al. 2020: `jnp.linspace(1e-4, 0.02, 1000)`). The schedule is fixed (a static
    field, never trained).
    """

    gammas: tuple[float, ...] = eqx.field(static=True)

    def __init__(self, betas: Float[ArrayLike, " steps"]):
        values = jnp.asarray(betas)
        if values.ndim != 1 or values.size < 2:
            raise ValueError(
                f"BetaSchedule needs a 1-D sequence of at least 2 betas, got shape {values.shape}."
            )
        gammas = []
        log_alpha_bar = 0.0
        for beta in values.tolist():
            if not 0.0 < beta < 1.0:
                raise ValueError(f"BetaSchedule needs every beta in (0, 1), got {beta}.")
            log_alpha_bar += math.log1p(-beta)
            gammas.append(math.log(math.expm1(-log_alpha_bar)))
        self.gammas = tuple(gammas)

    def __call__(self, t: Time) -> Float[Array, ""]:
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        gammas = jnp.asarray(self.gammas, dtype=t.dtype)
        return jnp.interp(t, jnp.linspace(0.0, 1.0, len(self.gammas), dtype=t.dtype), gammas)
