r"""Linear multivariate diffusions with auxiliary variables (MDM; Singhal, Goldstein &
Ranganath, ICLR 2023).

The state $u = (x, v_1, \dots, v_K)$ has shape `(K + 1, *x.shape)`: `u[0]` is the data,
`u[1:]` the $K$ auxiliary variables, all diffused. One $(K{+}1) \times (K{+}1)$ drift and
diffusion is shared by every data coordinate,
$$du = -\beta(t)(Q + D)\,u\,dt + \sqrt{2\beta(t) D}\,dW,$$
with $Q$ antisymmetric and $D$ positive semi-definite, so that $\mathcal N(0, I)$ is
stationary ($F + F^\top + G G^\top = -\beta(Q + Q^\top) = 0$). All linear algebra is on
$(K{+}1) \times (K{+}1)$ matrices acting on the leading axis, never $D \times D$.

**Transition.** With $B(t) = \int_0^t \beta$ and $M = Q + D$, from a fixed $u_0$,
$$u_t = A_t u_0 + L_t \varepsilon, \qquad A_t = e^{-B(t) M}, \qquad
\Sigma_t = L_t L_t^\top = \int_0^{B(t)} e^{-rM}\, 2D\, e^{-rM^\top} dr = I - A_t A_t^\top.$$
$\Sigma_t$ is computed by scaling and squaring the pair $(A, \Sigma)$ over $B(t)/2^n$
(Van Loan's block exponential on the small step, then $A_{2h} = A_h^2$,
$\Sigma_{2h} = A_h \Sigma_h A_h^\top + \Sigma_h$: sums of positive semi-definite terms, so no
cancellation): $I - A_t A_t^\top$ loses all precision at small $t$ in float32 (CLD's data
block is $O(t^3)$), and the block exponential over all of $B(t)$ loses it at large $t$.

**Bound.** $u_0 = (x, v_0)$ with $v_0 \sim q(v_0 \mid x) = \mathcal N(0, s^2 I)$ (the
reference's $s^2 = 0.01$), or, with `learn_aux_init`, the learned and $x$-conditioned
$\mathcal N(c\,x, \operatorname{diag}(s^2))$ ($c_k$, $s_k$ per auxiliary variable, shared
by every coordinate: linear in $x$, so the decoder stays the exact Gaussian posterior),
so $-\log P(x) \le \mathbb E_q[-\log p(x, v_0)] + \mathbb E_q \log q(v_0 \mid x)$: the
second term is the bound's `auxiliary` term, and the first is the VDM-form bound of the
joint state, whose diffusion term is
$\tfrac12 \lVert G^\top (\hat s - s)\rVert^2 = \tfrac12 \beta\, r^\top L_t^{-1} 2D L_t^{-\top} r$
per data coordinate, $r = \hat\varepsilon - \varepsilon$ (the network predicts
$\varepsilon$, the score is $-L_t^{-\top}\hat\varepsilon$). $\Sigma_t$ is singular at $t = 0$,
so the bound and the samplers run over $[t_{\min}, 1]$ and the reconstruction term decodes
$u_0$ from $u_{t_{\min}}$.

**Where the bound starts.** The reference's $t_{\min} = 10^{-3}$ suits its continuous
(dequantised, logit-transformed) data; on discrete data the data coordinate's negative
log-SNR $\gamma(t) = \log(\Sigma_t[0,0] / A_t[0,0]^2)$ is then $-27.2$ for CLD ($-47.7$ for
ALDA), a noise of $10^{-6}$ against bins $0.125$ apart on 17-level digits, where the
optimal $\hat\varepsilon$ is a sawtooth no network resolves: the bound pays about half a
nat per data coordinate for every unit of $\gamma$ it spans there (measured: 19.7
bits/dim on digits after 300 steps, against 4.09 for a uniform model). So the endpoint
is set, as VDM's is, by the log-SNR: `gamma_min` gives $t_{\min}$ as the first time at
which $\gamma(t)$ equals `gamma_min` (`time_min_for_gamma`); `time_min` sets it directly.

Where it should start depends on the network as well as on the data. The decoder of
$u_0$ given $u_{t_{\min}}$ is exact for the Gaussian kernel (`decoder_nll`), while a
trained denoiser pays for every unit of $\gamma$ it spans below the bins, and an MDM
whose noise reaches the data only through its auxiliary variables (CLD, ALDA, MALDA) pays
more there than VP does. On digits with the MLP denoiser (held-out ELBO, seed 0, 2000
steps) CLD scores 6.33 bits/dim at `gamma_min` $= -9.5$, 4.06 at $-6.5$, 3.43 at $-5.5$,
3.12 at $-4.5$, 3.00 at $-3.5$ and 3.07 at $-2.5$, against 2.80 for VP with the same
network on a fixed linear schedule over $[-9.5, 6.5]$. At $-9.5$ it spends 4.0 bits/dim
of its diffusion term below $\gamma = -3$, where VP spends 1.9, and a network of twice
the width and one more block barely changes that (5.94). `digits_mdm` starts at $-4.5$,
the best at its 8000 steps.

The networks take the state with the auxiliary variables as extra channels:
`network_shape((C, H, W))` is `((K + 1) C, H, W)`, and `denoiser(net)` reshapes.
"""

import abc
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .._custom_types import Data, Gamma, Scalar, Time
from .._discrete import discretized_gaussian_nll, to_levels
from .._precision import full_precision
from .._schedules import linear_beta, linear_beta_integral
from ._base import AbstractSDEProcess, InitialState
from ._small_linalg import cholesky, inverse, spd_inverse, triangular_inverse


Matrix = Float[Array, "k k"]
MState = Float[Array, "k *shape"]

_SQUARINGS = 8
r"""Halvings of $B(t)$ before the series: $B(1) = 5.05$ for the default $\beta$, so the
first step spans at most $0.02$."""

_ORDER = 6
r"""Terms of the Taylor series on the first step: the remainder, $(h\lVert M\rVert)^7/7!$,
is below float32's rounding for $h\lVert M\rVert \le 0.1$."""


def _apply(m: Matrix, u: MState) -> MState:
    """A `(K+1, K+1)` matrix acting on the leading axis of a state."""
    return jnp.tensordot(m, u, axes=1)


def _outer(coefficients: Float[Array, " k"], x: Data) -> MState:
    """One coefficient per auxiliary variable times a data-shaped array: `(K, *x.shape)`."""
    return jnp.tensordot(coefficients, x, axes=0)


@full_precision
def _kernel(m: Matrix, gg: Matrix, b: Float[Array, ""]) -> tuple[Matrix, Matrix]:
    r"""$(e^{-bM}, \int_0^b e^{-rM} GG^\top e^{-rM^\top} dr)$ for $b \ge 0$.

    On $h = b / 2^n$ both come from their Taylor series, $E_h = e^{-hM} - I =
    \sum_{k \ge 1} (-hM)^k / k!$ and $\Sigma_h = \sum_{k \ge 1} \frac{h^k}{k!}
    \mathcal L^{k-1}(GG^\top)$ with $\mathcal L(X) = -MX - XM^\top$; then $n$ doublings
    $E_{2h} = 2E_h + E_h^2$, $\Sigma_{2h} = (I + E_h)\Sigma_h(I + E_h)^\top + \Sigma_h$.
    Carrying $E = A - I$ rather than $A$ keeps the digits that $I + E$ would round away
    at small $b$, and every doubling adds positive semi-definite terms.
    """
    eye = jnp.eye(m.shape[0], dtype=m.dtype)
    h = b / 2.0**_SQUARINGS
    power, sigma_term = eye, h * gg
    e, sigma = jnp.zeros_like(m), jnp.zeros_like(m)
    for k in range(1, _ORDER + 1):
        power = -h * m @ power / k
        e, sigma = e + power, sigma + sigma_term
        sigma_term = h / (k + 1) * (-m @ sigma_term - sigma_term @ m.T)

    # Unrolled (eight products of tiny matrices): identical kernels across the methods of
    # one program then merge, where loops would not; a scan here quadruples compile time.
    for _ in range(_SQUARINGS):
        a = eye + e
        e, sigma = 2.0 * e + e @ e, a @ sigma @ a.T + sigma
    return eye + e, 0.5 * (sigma + sigma.T)


def time_min_for_gamma(
    q: ArrayLike, d: ArrayLike, beta_min: float, beta_max: float, gamma_min: float
) -> float:
    r"""The first $t \in [10^{-6}, 1]$ at which the data coordinate's negative log-SNR
    $\gamma(t) = \log(\Sigma_t[0,0] / A_t[0,0]^2)$ of the diffusion with matrices $Q$, $D$
    reaches `gamma_min`.

    In float64, by Van Loan's block exponential (scipy's Padé `expm`) of
    $B(t)\begin{pmatrix} -M & 2D \\ 0 & M^\top \end{pmatrix}$, $M = Q + D$, whose blocks
    $\begin{pmatrix} A_t & X \\ 0 & \cdot \end{pmatrix}$ give $\Sigma_t = X A_t^\top$ with no
    cancellation at small $t$ (CLD's data block is $O(t^3)$, ALDA's $O(t^5)$): a grid of
    600 log-spaced times, then bisection to $10^{-12}$ relative. ($\gamma$ need not be
    monotone: ALDA's overshoots to 9.1 at $t = 0.5$.) Raises `ValueError` when `gamma_min`
    lies outside $[\gamma(10^{-6}), \max_t \gamma(t)]$.
    """
    m = np.asarray(q, np.float64) + np.asarray(d, np.float64)
    n = m.shape[0]
    block = np.block([[-m, 2.0 * np.asarray(d, np.float64)], [np.zeros((n, n)), m.T]])

    def gamma(t: float) -> float:
        b = beta_min * t + 0.5 * (beta_max - beta_min) * t * t
        f = scipy.linalg.expm(b * block)
        a = f[:n, :n]
        sigma = f[:n, n:] @ a.T
        return float(np.log(sigma[0, 0]) - 2.0 * np.log(abs(a[0, 0])))

    grid = np.geomspace(1e-6, 1.0, 600)
    values = np.array([gamma(t) for t in grid])
    if not values[0] <= gamma_min <= values.max():
        raise ValueError(
            f"gamma_min={gamma_min} is outside the data's negative log-SNR range "
            f"[{values[0]:.2f}, {values.max():.2f}] over t in [1e-6, 1] for this diffusion; "
            "choose one inside it, or set time_min directly."
        )
    i = int(np.argmax(values >= gamma_min))
    if i == 0:
        return float(grid[0])
    low, high = float(grid[i - 1]), float(grid[i])
    while high - low > 1e-12 * high:
        mid = 0.5 * (low + high)
        low, high = (mid, high) if gamma(mid) < gamma_min else (low, mid)
    return high


def _resolve_time_min(
    q: ArrayLike,
    d: ArrayLike,
    beta_min: float,
    beta_max: float,
    time_min: float | None,
    gamma_min: float | None,
) -> float:
    if time_min is not None and gamma_min is not None:
        raise ValueError("Set time_min or gamma_min, not both: each fixes where the bound starts.")
    if gamma_min is not None:
        return time_min_for_gamma(q, d, beta_min, beta_max, gamma_min)
    return 1e-3 if time_min is None else time_min


class _Decoder(NamedTuple):
    r"""The pieces of an MDM's decoder at $z = u_{t_{\min}}$ (`AbstractLinearMDM._decoder`):
    $p(x \mid z)$'s mean `x_mean` and standard deviation `x_std`; the kernel-only mean
    $\mu = A^{-1} z$ (`mean`); the gain $g$ of $v_0$ on $x$ (`gain`); $S$ (`v_cov`),
    $W = (S + V)^{-1}$ (`w`) and $q(v_0 \mid x)$'s coefficient $c$ (`coef`) and variances
    $V$ (`var`)."""

    x_mean: Array
    x_std: Array
    mean: Array
    gain: Array
    v_cov: Array
    w: Array
    coef: Array
    var: Array


def _time_logit(time_min: float, learn: bool) -> Array | None:
    r"""The learned $\operatorname{logit} t_{\min}$, starting at `time_min`; `None` when
    $t_{\min}$ stays fixed."""
    if not learn:
        return None
    return jnp.asarray(math.log(time_min) - math.log1p(-time_min), dtype=float)


def _aux_init_params(num_aux: int, aux_variance: float, learn: bool) -> Array | None:
    r"""The learned $(c, \log s^2)$ of $q(v_0 \mid x)$, starting at the fixed law
    $(0, s^2)$; `None` when it stays fixed."""
    if not learn:
        return None
    return jnp.stack([jnp.zeros(num_aux), jnp.full(num_aux, math.log(aux_variance))])


def _check_mixed_score(variance: float | None) -> float | None:
    if variance is not None and not variance > 0:
        raise ValueError(f"mixed_score is the data's variance, > 0 (or None); got {variance}.")
    return variance


class AbstractLinearMDM(AbstractSDEProcess):
    r"""A linear MDM with $\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})$, the
    prior $\mathcal N(0, I)$ and $q(v_0 \mid x) = \mathcal N(c\,x, \operatorname{diag}(s^2))$
    per auxiliary variable (`aux_init`): $(0, s^2)$ fixed, the reference's, unless
    `aux_params` holds the learned $(c, \log s^2)$. The bound starts at $t_{\min}$
    (`t_min`): `time_min`, fixed, unless `time_logit` holds the learned
    $\operatorname{logit} t_{\min}$ (VDM's learned $\gamma_{\min}$ in this family's terms:
    the bound's Monte Carlo times are $t_{\min} + (1 - t_{\min})\,v$, so its estimate is
    differentiable in $t_{\min}$ and unbiased for the derivative of the bound).

    Subclasses give the matrices (`matrices`) and the fields below.
    """

    beta_min: eqx.AbstractVar[float]
    beta_max: eqx.AbstractVar[float]
    aux_variance: eqx.AbstractVar[float]
    aux_params: eqx.AbstractVar[Float[Array, "2 k"] | None]
    time_min: eqx.AbstractVar[float]
    time_logit: eqx.AbstractVar[Float[Array, ""] | None]
    mixed_score: eqx.AbstractVar[float | None]

    @abc.abstractmethod
    def matrices(self) -> tuple[Matrix, Matrix]:
        r"""$(Q, D)$: antisymmetric and positive semi-definite, each $(K{+}1) \times (K{+}1)$."""

    @property
    def num_aux(self) -> int:
        """$K$, the number of auxiliary variables."""
        return self.matrices()[0].shape[0] - 1

    @property
    def t_min(self) -> float | Scalar:
        if self.time_logit is None:
            return self.time_min
        return jax.nn.sigmoid(self.time_logit)

    def beta(self, t: Time) -> Float[Array, ""]:
        return linear_beta(self.beta_min, self.beta_max, t)

    def integrated_beta(self, t: Time) -> Float[Array, ""]:
        r"""$B(t) = \beta_{\min} t + \tfrac12(\beta_{\max} - \beta_{\min}) t^2$."""
        return linear_beta_integral(self.beta_min, self.beta_max, t)

    @full_precision
    def _between(self, s: Time, t: Time) -> tuple[Matrix, Matrix]:
        """The kernel of $u_t$ given $u_s$, $s \\le t$."""
        q, d = self.matrices()
        return _kernel(q + d, 2.0 * d, self.integrated_beta(t) - self.integrated_beta(s))

    @full_precision
    def transition(self, t: Time) -> tuple[Matrix, Matrix]:
        r"""$(A_t, \Sigma_t)$ of $u_t \mid u_0 \sim \mathcal N(A_t u_0, \Sigma_t)$, with
        `transition(0) = (I, 0)`."""
        return self._between(0.0, t)

    @full_precision
    def _factors(self, t: Time) -> tuple[Matrix, Matrix]:
        a, sigma = self.transition(t)
        return a, cholesky(sigma)

    def aux_init(self) -> tuple[Float[Array, " k"], Float[Array, " k"]]:
        r"""$(c, s^2)$ of $q(v_0 \mid x) = \mathcal N(c\,x, \operatorname{diag}(s^2))$, one
        pair per auxiliary variable, the same for every data coordinate."""
        if self.aux_params is None:
            k = self.num_aux
            return jnp.zeros(k), jnp.full(k, self.aux_variance)
        coef, log_var = self.aux_params
        return coef, jnp.exp(log_var)

    # The state.

    def initial_state(self, key: PRNGKeyArray, x: Data) -> InitialState:
        r"""$v_0 = c\,x + s\,\xi$, $\xi \sim \mathcal N(0, I)$; the cost is
        $\log q(v_0 \mid x)$ and its expectation
        $-\tfrac{D}{2}\sum_k (1 + \log 2\pi s_k^2)$ (the entropy, negated)."""
        coef, var = self.aux_init()
        white = jax.random.normal(key, (self.num_aux, *x.shape), x.dtype)
        # Per data coordinate, sum_k log(2 pi s_k^2) / 2.
        log_norm = 0.5 * jnp.sum(jnp.log(2 * math.pi * var))
        log_q = -0.5 * jnp.sum(white**2) - x.size * log_norm
        expected = -x.size * (0.5 * self.num_aux + log_norm)
        v0 = _outer(coef, x) + _apply(jnp.diag(jnp.sqrt(var)), white)
        u0 = jnp.concatenate([x[None], v0.astype(x.dtype)])
        return InitialState(u0, log_q.astype(x.dtype), expected.astype(x.dtype))

    def init_aux(self, key: PRNGKeyArray, x: Data) -> MState:
        r"""$u_0 = (x, v_0)$ with $v_0 \sim q(v_0 \mid x)$."""
        return self.initial_state(key, x).state

    def data(self, u: MState) -> Data:
        return u[0]

    def with_data(self, u: MState, x: Data) -> MState:
        return u.at[0].set(x)

    def partition(self, u: MState) -> tuple[MState, None]:
        return u, None

    def combine(self, diffused: MState, constant: None) -> MState:
        return diffused

    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> MState:
        return jax.random.normal(key, (self.num_aux + 1, *shape))

    def prior_log_prob(self, u: MState) -> Float[Array, ""]:
        return -0.5 * (jnp.sum(u**2) + u.size * math.log(2 * math.pi))

    def network_shape(self, data_shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        """The auxiliary variables as extra channels: `((K + 1) C, ...)`."""
        return ((self.num_aux + 1) * data_shape[0], *data_shape[1:]), 0

    def denoiser(self, net: Callable[..., Array]) -> Callable[[MState, Time], MState]:
        """`StackedDenoiser(net)`; with `mixed_score`, the network predicts the residual
        from `gaussian_eps`."""
        if self.mixed_score is None:
            return StackedDenoiser(net)
        return StackedDenoiser(net, self)

    @full_precision
    def gaussian_eps(self, u: MState, t: Time) -> MState:
        r"""The exact $\mathbb E[\varepsilon \mid u_t]$ when every data coordinate is
        $\mathcal N(0, \sigma^2)$, $\sigma^2$ = `mixed_score`:
        $L_t^\top \operatorname{Cov}(u_t)^{-1} u_t$, with
        $\operatorname{Cov}(u_t) = A_t C_0 A_t^\top + \Sigma_t$ and $C_0$ the covariance of
        $u_0 = (x, v_0)$, $\sigma^2 m m^\top + \operatorname{diag}(0, s^2)$, $m = (1, c)$
        (`aux_init`). A $(K{+}1) \times (K{+}1)$ gain on every coordinate, unitless."""
        if self.mixed_score is None:
            raise ValueError("gaussian_eps needs mixed_score, the data variance it assumes.")
        a, sigma = self.transition(t)
        coef, var = self.aux_init()
        m = jnp.concatenate([jnp.ones(1, coef.dtype), coef])
        c0 = self.mixed_score * jnp.outer(m, m) + jnp.diag(jnp.concatenate([jnp.zeros(1), var]))
        gain = cholesky(sigma).T @ spd_inverse(a @ c0 @ a.T + sigma)
        return _apply(gain, u)

    # The marginal and its conversions.

    @full_precision
    def perturb(self, u0: MState, t: Time, eps: MState) -> MState:
        a, chol = self._factors(t)
        return _apply(a, u0) + _apply(chol, eps)

    @full_precision
    def marginal_scale(self, u: MState, t: Time, eps: MState) -> MState:
        return _apply(self._factors(t)[1], eps)

    @full_precision
    def score_from_eps(self, u: MState, t: Time, eps: MState) -> MState:
        chol = self._factors(t)[1]
        return -_apply(triangular_inverse(chol).T, eps)

    @full_precision
    def eps_from_score(self, u: MState, t: Time, score: MState) -> MState:
        return -_apply(self._factors(t)[1].T, score)

    @full_precision
    def eps_from_x0(self, u: MState, t: Time, x0: MState) -> MState:
        a, chol = self._factors(t)
        return _apply(triangular_inverse(chol), u - _apply(a, x0))

    @full_precision
    def x0_from_eps(self, u: MState, t: Time, eps: MState) -> MState:
        a, chol = self._factors(t)
        return _apply(inverse(a), u - _apply(chol, eps))

    @full_precision
    def eps_from_v(self, u: MState, t: Time, v: MState) -> MState:
        raise NotImplementedError(
            "The velocity is defined for scaled-Gaussian processes (a_t x_0 + s_t eps); "
            "train an MDM with parameterization='eps' (or 'x', 'score')."
        )

    @full_precision
    def v_from_eps(self, u: MState, t: Time, eps: MState) -> MState:
        return self.eps_from_v(u, t, eps)

    @full_precision
    def gamma(self, u: MState, t: Time) -> Gamma:
        r"""The data coordinate's $\log(\Sigma_t[0, 0] / A_t[0, 0]^2)$."""
        a, sigma = self.transition(t)
        return jnp.log(sigma[0, 0]) - 2.0 * jnp.log(jnp.abs(a[0, 0]))

    @full_precision
    def log_det_scale(self, u: MState, t: Time) -> Float[Array, ""]:
        chol = self._factors(t)[1]
        return u[0].size * jnp.sum(jnp.log(jnp.diag(chol)))

    # The bound.

    @full_precision
    def _reverse(self, z: MState, t: Time) -> tuple[MState, Matrix]:
        r"""The mean and covariance of $u_0$ given $u_t = z$ under the forward kernel
        alone (no score): $A_t^{-1} z$ and $A_t^{-1}\Sigma_t A_t^{-\top}$."""
        a, sigma = self.transition(t)
        inv = inverse(a)
        return _apply(inv, z), inv @ sigma @ inv.T

    @full_precision
    def _decoder(self, z: MState) -> _Decoder:
        r"""The decoder's pieces at $z = u_{t_{\min}}$: the mean and standard deviation of
        $p(x \mid z)$, and what $p(v_0 \mid x, z)$ needs.

        The kernel alone gives $u_0 \mid z \sim \mathcal N(\mu, C)$, $\mu = A^{-1}z$,
        $C = A^{-1}\Sigma A^{-\top}$; conditioned on $x$, $v_0 \sim \mathcal N(\mu_v +
        g(x - \mu_x), S)$ with $g = C_{v x}/C_{xx}$, $S = C_{vv} - g C_{xv}$. The law
        $q(v_0 \mid x) = \mathcal N(c\,x, V)$ integrated out leaves
        $p(x \mid z) \propto \mathcal N(x; \mu_x, C_{xx})\,
        \mathcal N(b + h x; 0, W^{-1})$ with $h = g - c$, $b = \mu_v - g\mu_x$ and
        $W = (S + V)^{-1}$: a Gaussian of precision $\lambda = 1/C_{xx} + h^\top W h$ and
        mean $(\mu_x / C_{xx} - h^\top W b) / \lambda = \mu_x - h^\top W (\mu_v - c\,\mu_x)
        / \lambda$ (for $c = 0$, $\mu_x - g^\top W \mu_v / \lambda$).

        **Returns:** a `_Decoder`.
        """
        mean, cov = self._reverse(z, self.t_min)
        coef, var = self.aux_init()
        gain = cov[1:, 0] / cov[0, 0]
        v_cov = cov[1:, 1:] - jnp.outer(gain, cov[0, 1:])
        # One inverse, of a matrix whose eigenvalues are at least min(s^2) (S itself may be
        # nearly singular: ALDA's first auxiliary block is O(t^3)).
        v_cov = 0.5 * (v_cov + v_cov.T)
        w = spd_inverse(v_cov + jnp.diag(var))
        h = gain - coef
        # mu_v - c mu_x = b + h mu_x: the mean in the form that needs no 1 / C_xx.
        residual = mean[1:] - _outer(coef, mean[0])
        precision = 1.0 / cov[0, 0] + h @ w @ h
        x_mean = mean[0] - jnp.tensordot(w @ h, residual, axes=1) / precision
        return _Decoder(x_mean, jax.lax.rsqrt(precision), mean, gain, v_cov, w, coef, var)

    @full_precision
    def decoder_nll(self, u: MState, u0: MState, num_levels: int) -> Float[Array, ""]:
        r"""$-\log P(x \mid z) - \log p(v_0 \mid x, z)$ at $z = u_{t_{\min}}$: the exact
        posterior of the Gaussian model $z = A u_0 + L\varepsilon$ with a flat prior on
        $x$ and $q(v_0 \mid x) = \mathcal N(c\,x, V)$ (see `_decoder`).

        The data takes VDM's discretised decoder on $p(x \mid z)$, whose standard
        deviation is about half the kernel-only one, $\sqrt{C_{xx}}$, for CLD (0.0048
        against 0.0092 at $\gamma_{\min} = -9.5$, 0.036 against 0.080 at $-5.5$): $v_0$'s
        prior says how little of $z_x$ the velocity moved. For $v_0$ the decoder is the
        kernel conditioned on $x$, $\mathcal N(m, S)$, times $q(v_0 \mid x)$: covariance
        $(S^{-1} + V^{-1})^{-1} = S W V$ and mean $V W m + S W c\,x$. Without the factor
        $q(v_0 \mid x)$ a late $t_{\min}$ (large $S$) would charge $v_0$ far more than the
        `auxiliary` term $\log q(v_0 \mid x)$ gives back; with it, the two sum to at most
        0 in expectation (minus the information $z$ carries about $v_0$)."""
        d = self._decoder(u)
        x, v = u0[0], u0[1:]
        x_nll = discretized_gaussian_nll(x, d.x_mean, d.x_std, num_levels)
        v_mean = d.mean[1:] + _outer(d.gain, x - d.mean[0])
        shrink = d.var[:, None] * d.w
        post_mean = _apply(shrink, v_mean) + _apply(d.v_cov @ d.w, _outer(d.coef, x))
        post_cov = d.v_cov @ shrink.T
        chol = cholesky(0.5 * (post_cov + post_cov.T))
        white = _apply(triangular_inverse(chol), v - post_mean)
        v_nll = 0.5 * jnp.sum(white**2) + x.size * (
            jnp.sum(jnp.log(jnp.diag(chol))) + 0.5 * self.num_aux * math.log(2 * math.pi)
        )
        return x_nll + v_nll

    def decode(self, u: MState, num_levels: int) -> Int[Array, "*shape"]:
        r"""The data block's decoder mode: the bin nearest the mean of $p(x \mid z)$."""
        return to_levels(self._decoder(u).x_mean, num_levels)

    @full_precision
    def prior_kl(self, u0: MState) -> Float[Array, ""]:
        r"""$\mathrm{KL}(\mathcal N(A_1 u_0, \Sigma_1) \Vert \mathcal N(0, I))$, summed over the
        data coordinates."""
        a, sigma = self.transition(1.0)
        mean = _apply(a, u0)
        n = u0[0].size
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diag(cholesky(sigma))))
        k = sigma.shape[0]
        return 0.5 * (jnp.sum(mean**2) + n * (jnp.trace(sigma) - k - logdet))

    @full_precision
    def diffusion_loss(self, u: MState, t: Time, eps: MState, eps_hat: MState) -> Float[Array, ""]:
        r"""$\tfrac12 \beta(t) \sum r^\top L_t^{-1} 2D L_t^{-\top} r$, $r = \hat\varepsilon -
        \varepsilon$: $\tfrac12\lVert G^\top(\hat s - s)\rVert^2$."""
        _, d = self.matrices()
        inv = triangular_inverse(self._factors(t)[1])
        weight = self.beta(t) * inv @ (2.0 * d) @ inv.T
        r = eps_hat - eps
        return 0.5 * jnp.sum(r * _apply(weight, r))

    @full_precision
    def _posterior(self, t: Time, s: Time) -> tuple[Matrix, Matrix, Matrix, Matrix]:
        r"""$(A_s, K, P, \Sigma_{t|s})$ of $q(u_s \mid u_t, u_0)$: mean
        $A_s u_0 + K(u_t - A_t u_0)$, covariance $P$ (Joseph form, positive semi-definite
        by construction)."""
        a_s, sigma_s = self.transition(s)
        a_ts, sigma_ts = self._between(s, t)
        sigma_t = a_ts @ sigma_s @ a_ts.T + sigma_ts
        gain = sigma_s @ a_ts.T @ spd_inverse(sigma_t)
        rest = jnp.eye(gain.shape[0]) - gain @ a_ts
        cov = rest @ sigma_s @ rest.T + gain @ sigma_ts @ gain.T
        return a_s, gain, 0.5 * (cov + cov.T), sigma_ts

    @full_precision
    def diffusion_loss_discrete(
        self, u: MState, s: Time, t: Time, eps: MState, eps_hat: MState
    ) -> Float[Array, ""]:
        r"""$\tfrac12 \lVert P^{-1/2} C (u_0 - \hat u_0)\rVert^2$ with $C = A_s - K A_t$ the
        posterior mean's coefficient of $u_0$ and $u_0 - \hat u_0 = A_t^{-1} L_t
        (\hat\varepsilon - \varepsilon)$."""
        a_s, gain, cov, _ = self._posterior(t, s)
        a_t, chol_t = self._factors(t)
        coefficient = (a_s - gain @ a_t) @ inverse(a_t) @ chol_t
        white = triangular_inverse(cholesky(cov)) @ coefficient
        return 0.5 * jnp.sum(_apply(white, eps_hat - eps) ** 2)

    @full_precision
    def ancestral_mean(self, u: MState, t: Time, s: Time, eps_hat: MState) -> MState:
        a_s, gain, _, _ = self._posterior(t, s)
        a_t, _ = self._factors(t)
        x0 = self.x0_from_eps(u, t, eps_hat)
        return _apply(a_s, x0) + _apply(gain, u - _apply(a_t, x0))

    @full_precision
    def posterior_noise(self, u: MState, t: Time, s: Time, xi: MState) -> MState:
        return _apply(cholesky(self._posterior(t, s)[2]), xi)

    @full_precision
    def transition_noise(self, u: MState, t: Time, s: Time, xi: MState) -> MState:
        return _apply(cholesky(self._posterior(t, s)[3]), xi)

    # The SDE.

    @full_precision
    def drift(self, u: MState, t: Time) -> MState:
        q, d = self.matrices()
        return -self.beta(t) * _apply(q + d, u)

    @full_precision
    def diffusion_scale(self, u: MState, t: Time) -> Float[Array, ""]:
        return jnp.sqrt(self.beta(t))

    @full_precision
    def noise_apply(self, w: MState) -> MState:
        r"""$\sqrt{2D}\,w$, the symmetric square root (by eigendecomposition: $D$ depends on
        the parameters only, so this is one small LAPACK call, never a batched one)."""
        _, d = self.matrices()
        values, vectors = jnp.linalg.eigh(2.0 * d)
        root = (vectors * jnp.sqrt(jnp.maximum(values, 0.0))[None, :]) @ vectors.T
        return _apply(root, w)

    @full_precision
    def probability_flow_eps(self, u: MState, t: Time, eps: MState) -> MState:
        r"""$f + \tfrac12 \beta\, 2D L_t^{-\top}\hat\varepsilon$."""
        _, d = self.matrices()
        inv_t = triangular_inverse(self._factors(t)[1]).T
        return self.drift(u, t) + self.beta(t) * _apply(d @ inv_t, eps)


class StackedDenoiser(eqx.Module):
    """An array network as an MDM's `model(u_t, t)`: the `(K + 1, C, ...)` state enters
    as `(K + 1) C` channels and the output is read back in the state's shape, added to
    `process.gaussian_eps(u_t, t)` when a process is given (the mixed score of Dockhorn
    et al. 2022: the network learns what the data add to a Gaussian's denoiser)."""

    net: Callable[..., Array]
    process: "AbstractLinearMDM | None" = None

    def __call__(self, u: MState, t: Time) -> MState:
        out = self.net(u.reshape(-1, *u.shape[2:]), t).reshape(u.shape)
        if self.process is None:
            return out
        return out + self.process.gaussian_eps(u, t)


class LinearMDM(AbstractLinearMDM):
    r"""A linear MDM with fixed matrices $Q$ (antisymmetric) and $D$ (positive
    semi-definite).

    **Arguments:** `q`, `d` (each $(K{+}1) \times (K{+}1)$); `beta_min`, `beta_max` (the
    reference's 0.1 and 10); `aux_variance` $s^2$ of $q(v_0 \mid x)$ (0.01);
    `learn_aux_init`: learn $q(v_0 \mid x) = \mathcal N(c\,x, \operatorname{diag}(s^2))$
    from $(0, s^2)$ (the matrices stay fixed); and where the bound and the samplers stop:
    `time_min` $t_{\min}$ (the reference's $10^{-3}$, the default), or `gamma_min`, the
    data coordinate's negative log-SNR there (see the module's docstring; VDM's $-13.3$
    for 256 levels); `learn_time_min`: learn $t_{\min}$ from there; `mixed_score`: a
    data variance $\sigma^2$, whose Gaussian's exact denoiser (`gaussian_eps`) the
    network's output is added to (`None`, the default: the network predicts
    $\varepsilon$ alone).
    """

    q: tuple[tuple[float, ...], ...] = eqx.field(static=True)
    d: tuple[tuple[float, ...], ...] = eqx.field(static=True)
    beta_min: float = eqx.field(static=True)
    beta_max: float = eqx.field(static=True)
    aux_variance: float = eqx.field(static=True)
    aux_params: Float[Array, "2 k"] | None
    time_min: float = eqx.field(static=True)
    time_logit: Float[Array, ""] | None
    mixed_score: float | None = eqx.field(static=True)

    def __init__(
        self,
        q: ArrayLike | Sequence[Sequence[float]],
        d: ArrayLike | Sequence[Sequence[float]],
        *,
        beta_min: float = 0.1,
        beta_max: float = 10.0,
        aux_variance: float = 0.01,
        learn_aux_init: bool = False,
        time_min: float | None = None,
        gamma_min: float | None = None,
        learn_time_min: bool = False,
        mixed_score: float | None = None,
    ):
        q, d = np.asarray(q, np.float64), np.asarray(d, np.float64)
        if q.ndim != 2 or q.shape != d.shape or q.shape[0] != q.shape[1]:
            raise ValueError(f"Q and D must be square and alike, got {q.shape} and {d.shape}.")
        if not np.allclose(q, -q.T):
            raise ValueError("Q must be antisymmetric: Q = -Q^T.")
        if not np.allclose(d, d.T) or np.min(np.linalg.eigvalsh(d)) < -1e-9:
            raise ValueError("D must be symmetric positive semi-definite.")
        # Fixed matrices are static: neither trained nor touched by weight decay.
        self.q = tuple(map(tuple, q.tolist()))
        self.d = tuple(map(tuple, d.tolist()))
        self.beta_min, self.beta_max = beta_min, beta_max
        self.aux_variance = aux_variance
        self.aux_params = _aux_init_params(q.shape[0] - 1, aux_variance, learn_aux_init)
        self.time_min = _resolve_time_min(q, d, beta_min, beta_max, time_min, gamma_min)
        self.time_logit = _time_logit(self.time_min, learn_time_min)
        self.mixed_score = _check_mixed_score(mixed_score)

    def matrices(self) -> tuple[Matrix, Matrix]:
        return jnp.asarray(self.q), jnp.asarray(self.d)


def CLD(**kwargs) -> LinearMDM:
    r"""Critically damped Langevin diffusion (Dockhorn et al. 2022) as an MDM: one velocity
    variable, $Q = \begin{pmatrix} 0 & -1 \\ 1 & 0\end{pmatrix}$, $D = \operatorname{diag}(0, 2)$
    (unit mass, $\Gamma = 2\sqrt M$). Keyword arguments as `LinearMDM`. The gap
    $\mathrm{KL}(q(u_1 \mid u_0) \Vert \mathcal N(0, I))$ is $1.3 \cdot 10^{-3}$ nats per
    unit-scale data coordinate."""
    return LinearMDM([[0.0, -1.0], [1.0, 0.0]], np.diag([0.0, 2.0]), **kwargs)


def ALDA(*, beta_max: float = 30.0, **kwargs) -> LinearMDM:
    r"""Accelerated Langevin dynamics (Mou et al. 2019) as an MDM: two auxiliary
    variables, $Q = \begin{pmatrix} 0 & -1 & 0 \\ 1 & 0 & -1 \\ 0 & 1 & 0 \end{pmatrix}$,
    $D = \operatorname{diag}(0, 0, 1)$ (the reference's $L = 1/M = 1$, $\gamma = \psi = 1$).

    Its noise reaches the data only through two couplings, so it mixes slowly: at the
    reference's $\beta_{\max} = 10$ the gap $\mathrm{KL}(q(u_1 \mid u_0) \Vert
    \mathcal N(0, I))$ is 0.049 nats per unit-scale data coordinate (0.0014 nats at 25), and
    the prior term of the bound never vanishes. The default $\beta_{\max} = 30$ (a departure
    from the reference) brings it to $4.9 \cdot 10^{-4}$."""
    q = [[0.0, -1.0, 0.0], [1.0, 0.0, -1.0], [0.0, 1.0, 0.0]]
    return LinearMDM(q, np.diag([0.0, 0.0, 1.0]), beta_max=beta_max, **kwargs)


def MALDA(num_aux: int = 2, **kwargs) -> LinearMDM:
    r"""The reference's MALDA: $Q_{ij} = -1$ above the diagonal and $+1$ below it,
    $D = \operatorname{diag}(0, 2, \dots, 2)$ (unit auxiliary variance). The gap
    $\mathrm{KL}(q(u_1 \mid u_0) \Vert \mathcal N(0, I))$ is $4 \cdot 10^{-5}$ nats per
    unit-scale data coordinate for 2 or 3 auxiliary variables."""
    ones = np.ones((num_aux + 1, num_aux + 1))
    q = np.tril(ones, -1) - np.triu(ones, 1)
    return LinearMDM(q, np.diag([0.0] + [2.0] * num_aux), **kwargs)


class LearnedMDM(AbstractLinearMDM):
    r"""An MDM whose $Q = G - G^\top$ and $D$ are learned: antisymmetric and positive
    semi-definite for every value of the parameters.

    $D = B B^\top + \epsilon I$ (`full_d=True`), or the reference's diagonal
    $\operatorname{softplus}(d) + \epsilon$ (the default). (The reference's "full D",
    softplus applied elementwise to $d d^\top$, is not positive semi-definite in general,
    and none of its configs uses it.)

    **Arguments:** `num_aux` $K$, `key`, `full_d`, `eps` ($10^{-3}$), and `beta_min`,
    `beta_max`, `aux_variance`, `learn_aux_init`, `time_min`, `gamma_min`, `learn_time_min`,
    `mixed_score` as `LinearMDM` (`gamma_min` is solved for the initial matrices without
    their random part, $Q = 0$ and $D = (\log 2 + \epsilon) I$, and the $t_{\min}$ stays
    fixed as they are learned unless `learn_time_min`).
    At initialisation the gap
    $\mathrm{KL}(q(u_1 \mid u_0) \Vert \mathcal N(0, I))$ is $1.4 \cdot 10^{-3}$ nats per
    unit-scale data coordinate with a diagonal $D$ ($K = 1$, 2), $2.3 \cdot 10^{-3}$ with a
    full one; learning may move it.
    """

    g: Matrix
    b: Float[Array, "..."]
    full_d: bool = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    beta_min: float = eqx.field(static=True)
    beta_max: float = eqx.field(static=True)
    aux_variance: float = eqx.field(static=True)
    aux_params: Float[Array, "2 k"] | None
    time_min: float = eqx.field(static=True)
    time_logit: Float[Array, ""] | None
    mixed_score: float | None = eqx.field(static=True)

    def __init__(
        self,
        num_aux: int = 1,
        *,
        key: PRNGKeyArray,
        full_d: bool = False,
        eps: float = 1e-3,
        beta_min: float = 0.1,
        beta_max: float = 10.0,
        aux_variance: float = 0.01,
        learn_aux_init: bool = False,
        time_min: float | None = None,
        gamma_min: float | None = None,
        learn_time_min: bool = False,
        mixed_score: float | None = None,
    ):
        if num_aux < 1:
            raise ValueError(f"LearnedMDM needs num_aux >= 1, got {num_aux}.")
        n = num_aux + 1
        key_g, key_b = jax.random.split(key)
        self.g = 0.1 * jax.random.normal(key_g, (n, n))
        # D starts near (log 2) I either way: softplus(0) on the diagonal, or B = sqrt(log 2) I.
        noise = 0.1 * jax.random.normal(key_b, (n, n) if full_d else (n,))
        self.b = noise + math.sqrt(math.log(2.0)) * jnp.eye(n) if full_d else noise
        self.full_d = full_d
        self.eps = eps
        self.beta_min, self.beta_max = beta_min, beta_max
        self.aux_variance = aux_variance
        self.aux_params = _aux_init_params(num_aux, aux_variance, learn_aux_init)
        mean_d = (math.log(2.0) + eps) * np.eye(n)
        self.time_min = _resolve_time_min(
            np.zeros((n, n)), mean_d, beta_min, beta_max, time_min, gamma_min
        )
        self.time_logit = _time_logit(self.time_min, learn_time_min)
        self.mixed_score = _check_mixed_score(mixed_score)

    def matrices(self) -> tuple[Matrix, Matrix]:
        n = self.g.shape[0]
        if self.full_d:
            d = self.b @ self.b.T + self.eps * jnp.eye(n)
        else:
            d = jnp.diag(jax.nn.softplus(self.b) + self.eps)
        return self.g - self.g.T, d
