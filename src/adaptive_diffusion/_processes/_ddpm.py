r"""Discrete-time DDPM with a pluggable noise family (Ho et al. 2020; Rosen's NGLDM)."""

import math

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .._custom_types import Data, Gamma, Time
from .._noise import AbstractNoise, GaussianNoise
from .._schedules import BetaSchedule
from ._base import AbstractDataStateProcess, AbstractLinearProcess
from ._vp import VP


class DDPM(AbstractLinearProcess, AbstractDataStateProcess):
    r"""DDPM's forward marginals with noise of any zero-mean, unit-variance family:
    $$x_i = \sqrt{\bar\alpha_i}\,x_0 + \sqrt{1 - \bar\alpha_i}\,n, \qquad
    \bar\alpha_i = \prod_{j \le i}(1 - \beta_j), \quad i = 1, \dots, T,$$
    with $n$ drawn elementwise from `noise`. The latents sit at the times
    $t_i = (i - 1)/(T - 1)$ of `BetaSchedule(betas)` (linear in $\gamma$ in between), so
    the samplers' $T - 1$ uniform steps land on them: `sample_ancestral(..., num_steps=
    T - 1, denoise=True)` is DDPM's sampler, drawing the family's noise for $x_T$ and at
    every step (NGLDM's choice, with `BetaVariance()` its $\sigma_i^2 = \beta_i$), and
    `sample_ddim` is DDIM. It trains by noise-prediction regression,
    `ad.denoising_loss` with `ad.StepTimes(T)` (DDPM's uniform $i$).

    **What is a likelihood and what is not.** The family fixes each marginal
    $q(x_i \mid x_0)$, not a Markov chain: the sum of two Laplace draws is not Laplace,
    so no forward chain $x_{i-1} \to x_i$ with family noise has these marginals, and the
    Gaussian posterior $q(x_{i-1} \mid x_i, x_0)$ on which DDPM's variational bound
    rests does not exist. The sampler's step keeps the Gaussian posterior's mean with
    family noise: a heuristic reverse kernel, not the reverse of anything. The
    noise-regression loss estimates $\mathbb E[n \mid x_i]$, which is the score only for
    Gaussian noise (Tweedie's formula), so neither the probability-flow ODE nor the bound
    measures a likelihood here. This class therefore has neither: it is a linear process
    only, and asking it for a bound or an ODE likelihood is an error naming the missing
    capability. With `GaussianNoise` the marginals are those of `VP(BetaSchedule(betas))`
    (`as_vp()`), whose $T - 1$-step bound is DDPM's own and whose ODE gives the exact
    likelihood: evaluate a network trained here with it.

    **Arguments:**

    - `betas`: $\beta_1, \dots, \beta_T$, each in $(0, 1)$, $T \ge 2$ (`linear_betas`,
      `cosine_betas`).
    - `noise`: the noise family (`GaussianNoise()` by default).
    """

    schedule: BetaSchedule
    noise: AbstractNoise

    def __init__(self, betas: Float[ArrayLike, " steps"], noise: AbstractNoise = GaussianNoise()):
        self.schedule = BetaSchedule(betas)
        self.noise = noise

    @property
    def num_steps(self) -> int:
        """$T$, the number of latents $x_1, \\dots, x_T$."""
        return len(self.schedule.gammas)

    def as_vp(self) -> VP:
        """The Gaussian process with these marginals, `VP(BetaSchedule(betas))`."""
        return VP(self.schedule)

    @property
    def t_min(self) -> float:
        return 0.0

    def limitation(self) -> str:
        if self.noise.is_gaussian:
            return (
                "DDPM is a linear process only; with Gaussian noise its marginals are those "
                "of process.as_vp(), which has the bound and the ODE likelihood: evaluate "
                "the network with that process."
            )
        return (
            f"With {type(self.noise).__name__} the marginals define no Markov chain and the "
            "network's regression target E[n | x_t] is not the score, so no variational "
            "bound or ODE likelihood exists (see ad.DDPM); train with the denoising "
            "loss and compare by sample quality (FID, KID, precision/recall)."
        )

    def sample_noise(self, key: PRNGKeyArray, like: Data) -> Data:
        return self.noise.sample(key, like.shape, like.dtype)

    def perturb(self, u0: Data, t: Time, eps: Data) -> Data:
        return self.as_vp().perturb(u0, t, eps)

    def marginal_scale(self, u: Data, t: Time, eps: Data) -> Data:
        return self.as_vp().marginal_scale(u, t, eps)

    def eps_from_x0(self, u: Data, t: Time, x0: Data) -> Data:
        return self.as_vp().eps_from_x0(u, t, x0)

    def x0_from_eps(self, u: Data, t: Time, eps: Data) -> Data:
        return self.as_vp().x0_from_eps(u, t, eps)

    def eps_from_v(self, u: Data, t: Time, v: Data) -> Data:
        return self.as_vp().eps_from_v(u, t, v)

    def v_from_eps(self, u: Data, t: Time, eps: Data) -> Data:
        return self.as_vp().v_from_eps(u, t, eps)

    def gamma(self, u: Data, t: Time) -> Gamma:
        return self.as_vp().gamma(u, t)

    def ancestral_mean(self, u: Data, t: Time, s: Time, eps_hat: Data) -> Data:
        return self.as_vp().ancestral_mean(u, t, s, eps_hat)

    def posterior_noise(self, u: Data, t: Time, s: Time, xi: Data) -> Data:
        return self.as_vp().posterior_noise(u, t, s, xi)

    def transition_noise(self, u: Data, t: Time, s: Time, xi: Data) -> Data:
        return self.as_vp().transition_noise(u, t, s, xi)

    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Data:
        """$x_T \\approx n$: the family's noise ($\\bar\\alpha_T \\approx 4 \\cdot 10^{-5}$ for
        the linear betas)."""
        return self.noise.sample(key, shape)

    def prior_log_prob(self, u: Data) -> Float[Array, ""]:
        """The family's log-density of $x_T$, summed over dimensions, in nats."""
        return jnp.sum(self.noise.log_prob(u))

    def decode(self, u: Data, num_levels: int) -> Int[Array, "*shape"]:
        return self.as_vp().decode(u, num_levels)


def linear_betas(num_steps: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> Array:
    r"""DDPM's linear betas $\beta_i$ from $\beta_1$ to $\beta_T$ (Ho et al. 2020)."""
    return jnp.linspace(beta_1, beta_T, num_steps)


def cosine_betas(num_steps: int = 1000, offset: float = 0.008, max_beta: float = 0.999) -> Array:
    r"""The cosine schedule's betas (Nichol & Dhariwal 2021, eq. 17):
    $\bar\alpha(i) = f(i)/f(0)$, $f(i) = \cos^2\!\big(\frac{i/T + s}{1 + s}\frac\pi2\big)$,
    $\beta_i = \min(1 - \bar\alpha(i)/\bar\alpha(i - 1), \beta_{\max})$ with $s$ = `offset`."""

    def f(i: int) -> float:
        return math.cos((i / num_steps + offset) / (1 + offset) * math.pi / 2) ** 2

    return jnp.asarray(
        [min(1 - f(i) / f(i - 1), max_beta) for i in range(1, num_steps + 1)], jnp.float32
    )
