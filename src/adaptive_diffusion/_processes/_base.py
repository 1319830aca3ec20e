r"""The forward-process abstraction, in tiers of capability.

Every core function (`nelbo`, `batch_nelbo`, `dense_vlb`, `ode_log_likelihood`,
`ode_bits_per_dim`, the samplers) takes any process with the capability it needs and
calls only the methods named here; what differs between families is a method, never a
branch in the core.

- `AbstractProcess`, every forward process: the state built from data, its data part,
  its diffused and constant parts, marginal sampling, the prior, the decoder's mode and
  the network adapter. It trains by noise-prediction regression on `sample_marginal`.
- `AbstractLinearProcess`: $u_t = A_t u_0 + L_t n$ with unit noise $n$ of any family
  (DDPM with non-Gaussian noise lives here). Adds the conversions between the noise,
  clean data and velocity, the ancestral and DDIM steps and the log-SNR of the data part.
- `AbstractLinearGaussianProcess`: the same with $n \sim \mathcal N(0, I)$. Adds the
  score and its conversions, the marginal's density and the closed-form terms of the
  Gaussian variational bound.
- `AbstractSDEProcess`: the marginals of a linear SDE $du = f(u, t)\,dt + G(t)\,dW$
  with additive noise $G(t) = \operatorname{diag}(g(t))\,B$, a time-dependent scale
  times a fixed symmetric operator $B$ (the identity, $\Sigma^{1/2}$ by FFT, or an
  MDM's $\sqrt{2D}$ on the leading axis). Adds what the probability-flow ODE and the
  reverse SDE need.

**State.** A state may carry more than the data. It has one *diffused* array, which
the noise enters (the data; an MDM's `(K + 1, *x.shape)` block of data and auxiliary
variables), and optionally *constant* parts, fixed in time (MuLAN's latent $z$): these
are never noised, never probed by a trace estimator and never integrated by a solver,
and `partition` / `combine` split and join the two. White noise, noise predictions,
scores and drifts are all shaped like the diffused array. `initial_state` draws the
auxiliary parts from $q(\mathrm{aux} \mid x)$ and returns what they cost in the bound:
$\log q(\mathrm{aux} \mid x) - \log p(\mathrm{aux}_{\text{constant}})$, since the prior
of a constant part is not part of the diffused density that the bound's other terms and
the ODE compute (those are conditional on it), while a diffused auxiliary variable's
density is.

All methods act on a single example; batch with `jax.vmap`.
"""

import abc
import math
from collections.abc import Callable
from typing import TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from .._custom_types import Data, Gamma, Noise, Scalar, State, Time


class InitialState(eqx.Module):
    r"""A draw $u_0 \sim q(u_0 \mid x)$ and what its auxiliary part costs in the bound.

    **Fields:**

    - `state`: the state $u_0$ (the data, plus any auxiliary parts).
    - `log_ratio`: $\log q(\mathrm{aux} \mid x) - \log p(\mathrm{aux}_{\text{constant}})$
      at this draw, in nats (or an upper bound on it), for importance weighting; zero
      for a process whose state is the data.
    - `kl`: its expectation over $q$ in closed form where one exists (else equal to
      `log_ratio`): the `auxiliary` term of the variational bound, in nats.
    """

    state: State
    log_ratio: Float[Array, ""]
    kl: Float[Array, ""]


class AbstractProcess(eqx.Module):
    """Every forward process over one example: state, marginal, prior, decoder, adapter."""

    @property
    @abc.abstractmethod
    def t_min(self) -> float | Scalar:
        r"""The first time at which the marginal $q(u_t \mid x)$ is non-degenerate: the
        reconstruction term, the process dequantisation and the samplers end here, and
        the diffusion term runs over $[t_{\min}, 1]$. Zero unless the marginal at
        $t = 0$ is singular (CLD's is, in the data block). A number, or a scalar array
        where it is learned (an MDM's `learn_time_min`)."""

    @abc.abstractmethod
    def initial_state(self, key: PRNGKeyArray, x: Data) -> InitialState:
        r"""A state $u_0 \sim q(u_0 \mid x)$ for data `x`, with its auxiliary cost."""

    @abc.abstractmethod
    def data(self, u: State) -> Data:
        """The data part of a state."""

    @abc.abstractmethod
    def with_data(self, u: State, x: Data) -> State:
        """`u` with its data part replaced by `x` (a dequantised copy of the data, say)."""

    @abc.abstractmethod
    def partition(self, u: State) -> tuple[Noise, PyTree]:
        """`(diffused, constant)`: the array the noise enters, and the parts fixed in time
        (`None` when there are none)."""

    @abc.abstractmethod
    def combine(self, diffused: Noise, constant: PyTree) -> State:
        """The inverse of `partition`."""

    @abc.abstractmethod
    def sample_marginal(self, key: PRNGKeyArray, u0: State, t: Time) -> tuple[State, Noise]:
        r"""Draw $u_t \sim q(u_t \mid u_0)$.

        **Returns:** `(u_t, eps)`, with `eps` the noise drawn, shaped like the diffused
        part: the network's regression target.
        """

    @abc.abstractmethod
    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> State:
        """A state drawn from the prior at t = 1, for data of shape `shape` (the
        auxiliary parts included: constant ones from their own prior)."""

    @abc.abstractmethod
    def prior_log_prob(self, u: State) -> Float[Array, ""]:
        """Log-density of the prior at t = 1 of the diffused part, given the constant
        parts (whose prior the auxiliary cost carries), in nats."""

    @abc.abstractmethod
    def decode(self, u: State, num_levels: int) -> Int[Array, "*shape"]:
        """The most probable integer levels `0 .. num_levels - 1` of the data given a
        state at `t_min` (the decoder's mode)."""

    @abc.abstractmethod
    def network_shape(self, data_shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        """`(input_shape, cond_dim)` of the array network `denoiser` adapts, for data of
        shape `data_shape`: the shape of its input and the size of its conditioning
        vector (0 for none)."""

    @abc.abstractmethod
    def denoiser(self, net: Callable[..., Array]) -> Callable[[State, Time], Noise]:
        r"""An array network `net(h, t, cond)` (built for `network_shape`) as the
        `model(u_t, t)` that the core's bound, likelihood and samplers take, predicting
        an array shaped like the diffused part."""

    def limitation(self) -> str:
        """Why this process lacks the capabilities of the tiers above it, in a sentence
        for the error of `require_capability` (empty when there is nothing to say)."""
        return ""


class AbstractDataStateProcess(AbstractProcess):
    """A process whose state is the data itself: no auxiliary parts, nothing constant."""

    def initial_state(self, key: PRNGKeyArray, x: Data) -> InitialState:
        del key
        zero = jnp.zeros((), x.dtype)
        return InitialState(x, zero, zero)

    def data(self, u: Data) -> Data:
        return u

    def with_data(self, u: Data, x: Data) -> Data:
        return x

    def partition(self, u: Data) -> tuple[Data, None]:
        return u, None

    def combine(self, diffused: Data, constant: None) -> Data:
        return diffused

    def network_shape(self, data_shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        return tuple(data_shape), 0

    def denoiser(self, net: Callable[..., Array]) -> Callable[[Data, Time], Data]:
        """`net` itself, called as `net(u_t, t)`."""
        return net


class AbstractLinearProcess(AbstractProcess):
    r"""$u_t = A_t u_0 + L_t n$ on the diffused part (the constant parts pass through),
    with $n$ drawn elementwise from the process's noise family: zero mean and unit
    variance, Gaussian or not (DDPM with Laplace noise lives here).

    Everything linear in $n$ holds whatever its distribution: the marginal map, the
    conversions between the noise prediction $\hat n$, the clean state $\hat u_0$ and
    the velocity, the reverse step's mean and scales. What needs the Gaussian (a density,
    the score, the variational bound) is the next tier's.
    """

    @abc.abstractmethod
    def sample_noise(self, key: PRNGKeyArray, like: Noise) -> Noise:
        r"""Noise $n$ of the process's family, shaped and typed like `like` (the diffused
        part): what the marginal and the samplers' steps draw."""

    @abc.abstractmethod
    def perturb(self, u0: State, t: Time, eps: Noise) -> State:
        r"""The marginal map $u_t = A_t u_0 + L_t n$ for noise `eps`."""

    def sample_marginal(self, key: PRNGKeyArray, u0: State, t: Time) -> tuple[State, Noise]:
        diffused, _ = self.partition(u0)
        eps = self.sample_noise(key, diffused)
        return self.perturb(u0, t, eps), eps

    @abc.abstractmethod
    def marginal_scale(self, u: State, t: Time, eps: Noise) -> Noise:
        r"""$L_t n$: unit noise scaled to the marginal's noise."""

    @abc.abstractmethod
    def eps_from_x0(self, u: State, t: Time, x0: Noise) -> Noise:
        r"""$\hat\varepsilon = L_t^{-1}(u_t - A_t \hat u_0)$ for a clean diffused part
        $\hat u_0$."""

    @abc.abstractmethod
    def x0_from_eps(self, u: State, t: Time, eps: Noise) -> Noise:
        r"""$\hat u_0 = A_t^{-1}(u_t - L_t \hat\varepsilon)$, the clean diffused part."""

    @abc.abstractmethod
    def eps_from_v(self, u: State, t: Time, v: Noise) -> Noise:
        r"""$\hat\varepsilon$ from a velocity prediction $\hat v$ (Salimans & Ho 2022)."""

    @abc.abstractmethod
    def v_from_eps(self, u: State, t: Time, eps: Noise) -> Noise:
        r"""The velocity $v$ implied by a noise prediction (the inverse of `eps_from_v`)."""

    @abc.abstractmethod
    def gamma(self, u: State, t: Time) -> Gamma:
        r"""$\gamma(t) = -\log\mathrm{SNR}$ of the data part at $t$: a scalar, or one value
        per data dimension. Its curves are the schedule pictures; `ArcLengthTimes` spreads
        its times by their speed."""

    @abc.abstractmethod
    def ancestral_mean(self, u: State, t: Time, s: Time, eps_hat: Noise) -> Noise:
        r"""The mean of $q(u_s \mid u_t, \hat u_0)$ for Gaussian noise,
        $\hat u_0$ = `x0_from_eps(u, t, eps_hat)`, for $s < t$ (the diffused part): the
        ancestral sampler's step, which DDPM keeps for every noise family."""

    @abc.abstractmethod
    def posterior_noise(self, u: State, t: Time, s: Time, xi: Noise) -> Noise:
        r"""Unit noise `xi` scaled to the noise of $q(u_s \mid u_t, u_0)$ (DDPM's
        $\tilde\beta_t$)."""

    @abc.abstractmethod
    def transition_noise(self, u: State, t: Time, s: Time, xi: Noise) -> Noise:
        r"""Unit noise `xi` scaled to the noise of the forward transition
        $q(u_t \mid u_s)$ (DDPM's $\beta_t$)."""


class AbstractLinearGaussianProcess(AbstractLinearProcess):
    r"""$u_t = A_t u_0 + L_t \varepsilon$, $\varepsilon \sim \mathcal N(0, I)$, acting on
    the diffused part (the constant parts pass through).

    Adds what the Gaussian gives: the score
    $\nabla \log q(u_t \mid u_0) = -L_t^{-\top}\varepsilon$ and its conversions, the
    marginal's density, and the closed-form terms of the variational bound.
    """

    def sample_noise(self, key: PRNGKeyArray, like: Noise) -> Noise:
        return jax.random.normal(key, like.shape, like.dtype)

    @abc.abstractmethod
    def score_from_eps(self, u: State, t: Time, eps: Noise) -> Noise:
        r"""The score implied by a white-noise prediction: $-L_t^{-\top}\hat\varepsilon$."""

    @abc.abstractmethod
    def eps_from_score(self, u: State, t: Time, score: Noise) -> Noise:
        r"""The white-noise prediction implied by a score: $-L_t^\top s$."""

    @abc.abstractmethod
    def log_det_scale(self, u: State, t: Time) -> Float[Array, ""]:
        r"""$\log\lvert\det L_t\rvert$."""

    def marginal_log_prob(self, u: State, t: Time, eps: Noise) -> Float[Array, ""]:
        r"""$\log q(u_t \mid u_0) = -\tfrac12 \lVert\varepsilon\rVert^2 - \tfrac n2 \log 2\pi
        - \log\lvert\det L_t\rvert$ at $u_t$ = `perturb(u0, t, eps)`, in nats."""
        gauss = -0.5 * (jnp.sum(eps**2) + eps.size * math.log(2 * math.pi))
        return gauss - self.log_det_scale(u, t)

    @abc.abstractmethod
    def decoder_nll(self, u: State, u0: State, num_levels: int) -> Float[Array, ""]:
        r"""$-\log p(u_0 \mid u_{t_{\min}} = u)$ in nats: a probability of the data part of
        `u0` (on the grid of `num_levels` bins) times a density of its diffused auxiliary
        part (an MDM's $v_0$), if any."""

    @abc.abstractmethod
    def prior_kl(self, u0: State) -> Float[Array, ""]:
        r"""$\mathrm{KL}(q(u_1 \mid u_0) \,\Vert\, p(u_1))$ of the diffused part, in nats."""

    @abc.abstractmethod
    def diffusion_loss(self, u: State, t: Time, eps: Noise, eps_hat: Noise) -> Float[Array, ""]:
        r"""The continuous-time diffusion-loss integrand at `t`, in nats: its expectation
        over $t \sim U(t_{\min}, 1)$, times $1 - t_{\min}$, is the diffusion term of the
        bound. `u` is any state of the example (its constant parts are read)."""

    @abc.abstractmethod
    def diffusion_loss_discrete(
        self, u: State, s: Time, t: Time, eps: Noise, eps_hat: Noise
    ) -> Float[Array, ""]:
        r"""$\mathrm{KL}(q(u_s \mid u_t, u_0) \Vert p(u_s \mid u_t))$ at step $t \to s < t$,
        in nats: the finite-$T$ diffusion term is the sum over the $T$ steps."""


class AbstractSDEProcess(AbstractLinearGaussianProcess):
    r"""The marginals of $du = f(u, t)\,dt + G(t)\,dW$, $G = \operatorname{diag}(g(t))\,B$,
    on the diffused part: what the probability-flow ODE and the reverse SDE need."""

    @abc.abstractmethod
    def drift(self, u: State, t: Time) -> Noise:
        r"""The forward drift $f(u, t)$ of the diffused part."""

    @abc.abstractmethod
    def diffusion_scale(self, u: State, t: Time) -> Gamma:
        r"""The elementwise scale $g(t)$ of $G(t) = \operatorname{diag}(g(t)) B$,
        broadcastable to the diffused part."""

    @abc.abstractmethod
    def noise_apply(self, w: Noise) -> Noise:
        r"""$B w$ for the fixed symmetric factor $B$ of $G(t)$."""

    def diffusion(self, u: State, t: Time, w: Noise) -> Noise:
        r"""$G(t)\,w$: the diffusion applied to a Brownian increment `w`."""
        return self.diffusion_scale(u, t) * self.noise_apply(w)

    def diffusion_covariance(self, u: State, t: Time, v: Noise) -> Noise:
        r"""$G(t) G(t)^\top v = g \odot B B (g \odot v)$."""
        g = self.diffusion_scale(u, t)
        return g * self.noise_apply(self.noise_apply(g * v))

    def probability_flow(self, u: State, t: Time, score: Noise) -> Noise:
        r"""The probability-flow drift $f(u, t) - \tfrac12 G G^\top \nabla\log p_t(u)$."""
        return self.drift(u, t) - 0.5 * self.diffusion_covariance(u, t, score)

    @abc.abstractmethod
    def probability_flow_eps(self, u: State, t: Time, eps: Noise) -> Noise:
        r"""The probability-flow drift for the score $-L_t^{-\top}\hat\varepsilon$ of a
        white-noise prediction, `probability_flow(u, t, score_from_eps(u, t, eps))`,
        computed with as few applications of the noise operators as the process allows."""

    def reverse_drift(self, u: State, t: Time, score: Noise) -> Noise:
        r"""The reverse-time SDE drift $f(u, t) - G G^\top \nabla\log p_t(u)$ (Anderson 1982)."""
        return self.drift(u, t) - self.diffusion_covariance(u, t, score)


_Tier = TypeVar("_Tier", bound=AbstractProcess)


class CapabilityError(TypeError):
    """A process asked for something its tier does not offer (`require_capability`)."""


def require_capability(process: AbstractProcess, tier: type[_Tier], what: str) -> _Tier:
    """`process` itself if it has the capabilities of `tier`, else a `CapabilityError`
    naming what needed them and, where the process says, why it lacks them: the one check
    the core makes at its boundary, never a dispatch."""
    if not isinstance(process, tier):
        why = process.limitation()
        raise CapabilityError(
            f"{what} needs a process with the capabilities of {tier.__name__}; "
            f"{type(process).__name__} does not have them." + (f" {why}" if why else "")
        )
    return process
