r"""The non-isotropic processes of Voleti, Oberman & Pal (2022): variance preserving
(NI-DDPM / NIVP SDE) and variance exploding (NI-SMLD).

$$x_t = \alpha_t x_0 + \sigma_t \Sigma^{1/2} \varepsilon, \qquad
q(x_t \mid x_0) = \mathcal N(\alpha_t x_0, \sigma_t^2 \Sigma),$$
the marginal of the NIVP SDE (the paper's eqs. 24-25)
$dx = f(t)\,x\,dt + g(t)\,\Sigma^{1/2} dW$. It is VP conjugated by $\Sigma^{1/2}$: in the
white coordinates $y = \Sigma^{-1/2} x$ it is the ordinary VP process, so everything is
`AbstractVPProcess` with a covariance operator in place of the identity. The
variance-exploding process $x_t = x_0 + \sigma_t \Sigma^{1/2}\varepsilon$ (appendices D-E;
SMLD/NCSN of Song & Ermon 2019 for $\Sigma = I$) is the same scaled-Gaussian base with
other scales.
"""

import jax.numpy as jnp

from .._covariance import AbstractCovariance
from .._custom_types import Gamma
from .._schedules import AbstractSchedule
from ._vp import AbstractScaledGaussianProcess, AbstractVPProcess, check_scalar_schedule


_COMMUTE = (
    "a per-dimension sigma_t does not commute with Sigma^(1/2), so x_t would not be "
    "N(a_t x_0, sigma_t^2 Sigma). Use a scalar schedule, or DiagonalVP for white noise with "
    "one gamma per dimension."
)


class NonIsotropicVP(AbstractVPProcess):
    r"""$x_t = \alpha_t x_0 + \sigma_t \Sigma^{1/2}\varepsilon$ with a scalar schedule and
    any covariance operator $\Sigma$ (e.g. `GFFCovariance`, applied by FFT).

    What each part of the library sees (paper equations in brackets):

    - `sample_marginal` returns $x_t$ and the white $\varepsilon$, the network's target
      (eqs. 10, 14-16).
    - Scores: $\nabla\log q(x_t \mid x_0) = -\Sigma^{-1/2}\varepsilon/\sigma_t$, so
      `score_from_eps` is $-\Sigma^{-1/2}\hat\varepsilon/\sigma_t$ and `eps_from_score` is
      $-\sigma_t \Sigma^{1/2} s$ (eqs. 11, 15); $\hat x_0 = (x_t - \sigma_t \Sigma^{1/2}
      \hat\varepsilon)/\alpha_t$ (eq. 17).
    - The SDE: $f = -\tfrac12\sigma_t^2\gamma'$, $G G^\top = g^2 \Sigma$ with
      $g^2 = \sigma_t^2\gamma'$ (for the linear-$\beta$ schedule, $g^2 = \beta(t)$: eq. 24),
      so the probability-flow and reverse-SDE drifts are
      $f x - \tfrac12 g^2 \Sigma \nabla\log p_t$ and $f x - g^2 \Sigma \nabla\log p_t$.
    - The prior $\mathcal N(0, \Sigma)$, whose log-density includes
      $-\tfrac12\log\det\Sigma$.
    - The bound: the diffusion loss is VDM's in the white coordinates,
      $\tfrac12 \gamma'(t) \lVert\varepsilon - \hat\varepsilon\rVert^2$ (a KL between
      Gaussians with covariances $\propto \Sigma$ is the KL of their whitened versions);
      the prior KL is $\mathrm{KL}(\mathcal N(\alpha_1 x, \sigma_1^2\Sigma) \Vert
      \mathcal N(0, \Sigma))$, computed from $y = \Sigma^{-1/2} x$; the reconstruction
      term is VDM's factorised discretised decoder in data space, with per-pixel scale
      $\sigma_0 \sqrt{\Sigma_{ii}}/\alpha_0$. The true $q(z_0 \mid x)$ has correlated
      noise, so this decoder is not the posterior, but it is a normalised distribution
      over the discrete $x$ for every $z_0$, so the bound holds. For a spectral covariance
      $\Sigma_{ii} = 1$. The entropy of $q(z_0 \mid x)$ carries
      $\tfrac12\log\det\Sigma$: a model that spreads its density continuously over the
      bins (rather than knowing the data are discrete) pays $-\tfrac12\log\det\Sigma / D$
      nats per dimension more than with white noise of the same mean variance.
    - `ode_log_likelihood` needs nothing more, and
      $\log p_{\mathrm{NI}}(x) = \log p_{\mathrm{VP}}(\Sigma^{-1/2}x) - \tfrac12\log\det\Sigma$
      for the whitened data distribution.

    **Arguments:**

    - `schedule`: a scalar schedule $\gamma(t)$ (linear, cosine, learned, `BetaSchedule`
      for the discrete-time NI-DDPM). Per-dimension schedules do not commute with
      $\Sigma^{1/2}$ and are refused.
    - `covariance`: the noise covariance; its shape must match the data's.
    """

    schedule: AbstractSchedule
    covariance: AbstractCovariance

    def check_gamma_shape(self, gamma_shape: tuple[int, ...], data_shape: tuple[int, ...]):
        check_scalar_schedule("NonIsotropicVP", gamma_shape, _COMMUTE)


class NonIsotropicVE(AbstractScaledGaussianProcess):
    r"""$x_t = x_0 + \sigma_t \Sigma^{1/2} \varepsilon$, $\sigma_t^2 = e^{\gamma(t)}$, with
    prior $\mathcal N(0, \sigma_1^2 \Sigma)$: the marginal of $dx = g(t)\,\Sigma^{1/2} dW$ with
    $g^2 = d\sigma_t^2/dt = \sigma_t^2\gamma'(t)$.

    The schedule is the same object as for VP: $\gamma = -\log\mathrm{SNR} = \log\sigma_t^2$,
    so `LinearSchedule(2 log sigma_min, 2 log sigma_max)` is SMLD's geometric sequence
    $\sigma_t = \sigma_{\min}(\sigma_{\max}/\sigma_{\min})^t$. Sample it with
    `sample_annealed_langevin` (NI-SMLD) or any other sampler; $\sigma_1$ must dwarf the
    data (SMLD: the largest pairwise distance) for the prior to match $p_1$.

    **Arguments:**

    - `schedule`: a scalar schedule, read as $\gamma(t) = \log \sigma_t^2$.
    - `covariance`: the noise covariance (`IdentityCovariance()` gives plain SMLD).
    """

    schedule: AbstractSchedule
    covariance: AbstractCovariance

    def check_gamma_shape(self, gamma_shape: tuple[int, ...], data_shape: tuple[int, ...]):
        check_scalar_schedule("NonIsotropicVE", gamma_shape, _COMMUTE)

    def log_scales(self, gamma: Gamma) -> tuple[Gamma, Gamma]:
        r"""$(0, \gamma)$: $a = 1$, $s^2 = e^\gamma$."""
        return jnp.zeros_like(gamma), gamma

    def log_prior_variance(self, gamma_1: Gamma) -> Gamma:
        r"""$\gamma(1)$: the prior $\mathcal N(0, \sigma_1^2\Sigma)$."""
        return gamma_1
