r"""Variance-preserving processes: VP (VDM), DiagonalVP, and their shared machinery.

$$x_t = \alpha_t x_0 + \sigma_t \Sigma^{1/2} \varepsilon, \qquad
\alpha_t^2 = \operatorname{sigmoid}(-\gamma(t)), \quad
\sigma_t^2 = \operatorname{sigmoid}(\gamma(t)),$$

the marginal of the SDE $dx = f(t)\,x\,dt + g(t)\,\Sigma^{1/2} dW$ with
$f = \tfrac{d}{dt}\log\alpha_t = -\tfrac12 \sigma_t^2 \gamma'(t)$ and
$g^2 = \tfrac{d\sigma_t^2}{dt} - 2 f \sigma_t^2 = \sigma_t^2 \gamma'(t)$.
$\gamma$ may be a scalar (VP) or one value per dimension (DiagonalVP, MuLAN): every
formula is elementwise. In the white coordinates $y = \Sigma^{-1/2} x$ the process is an
ordinary VP, which is how the bound below is computed.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._covariance import AbstractCovariance, IdentityCovariance
from .._custom_types import Data, Gamma, Time
from .._discrete import discretized_gaussian_nll
from .._schedules import AbstractSchedule, alpha_sigma, gamma_and_derivative
from ._base import AbstractProcess


class AbstractVPProcess(AbstractProcess):
    r"""A VP process with schedule $\gamma(t)$ and noise covariance $\Sigma$.

    Subclasses set `schedule` and `covariance` and say which shapes of $\gamma$ they
    accept in `check_gamma_shape`; everything else is shared.
    """

    schedule: eqx.AbstractVar[AbstractSchedule]
    covariance: eqx.AbstractVar[AbstractCovariance]

    @abc.abstractmethod
    def check_gamma_shape(self, gamma_shape: tuple[int, ...], data_shape: tuple[int, ...]):
        """Raise `ValueError` naming the fix if the schedule's output shape does not fit."""

    def gamma(self, t: Time, x: Data) -> Gamma:
        r"""$\gamma(t)$, checked against the data shape (scalar or per-dimension)."""
        gamma, _ = self.gamma_and_derivative(t, x)
        return gamma

    def gamma_and_derivative(self, t: Time, x: Data) -> tuple[Gamma, Gamma]:
        r"""$(\gamma(t), \gamma'(t))$, checked against the data shape."""
        gamma, dgamma = gamma_and_derivative(self.schedule, t)
        self.check_gamma_shape(gamma.shape, x.shape)
        return gamma, dgamma

    def alpha_sigma(self, t: Time, x: Data) -> tuple[Gamma, Gamma]:
        r"""$(\alpha_t, \sigma_t)$, scalar or per-dimension."""
        return alpha_sigma(self.gamma(t, x))

    def perturb(self, u0: Data, t: Time, eps: Data) -> Data:
        alpha, sigma = self.alpha_sigma(t, u0)
        return alpha * u0 + sigma * self.covariance.sqrt_apply(eps)

    def drift(self, u: Data, t: Time) -> Data:
        gamma, dgamma = self.gamma_and_derivative(t, u)
        return -0.5 * jax.nn.sigmoid(gamma) * dgamma * u

    def diffusion_scale(self, t: Time, u: Data) -> Gamma:
        r"""$g(t) = \sqrt{\sigma_t^2 \gamma'(t)}$."""
        gamma, dgamma = self.gamma_and_derivative(t, u)
        return jnp.sqrt(jax.nn.sigmoid(gamma) * dgamma)

    def noise_apply(self, w: Data) -> Data:
        return self.covariance.sqrt_apply(w)

    def score_from_eps(self, u: Data, t: Time, eps: Data) -> Data:
        _, sigma = self.alpha_sigma(t, u)
        return -self.covariance.inv_sqrt_apply(eps) / sigma

    def eps_from_score(self, u: Data, t: Time, score: Data) -> Data:
        _, sigma = self.alpha_sigma(t, u)
        return -sigma * self.covariance.sqrt_apply(score)

    def eps_from_x0(self, u: Data, t: Time, x0: Data) -> Data:
        r"""$\hat\varepsilon = \Sigma^{-1/2}(u_t - \alpha_t \hat x_0) / \sigma_t$."""
        alpha, sigma = self.alpha_sigma(t, u)
        return self.covariance.inv_sqrt_apply(u - alpha * x0) / sigma

    def x0_from_eps(self, u: Data, t: Time, eps: Data) -> Data:
        r"""$\hat x_0 = (u_t - \sigma_t \Sigma^{1/2} \hat\varepsilon) / \alpha_t$."""
        alpha, sigma = self.alpha_sigma(t, u)
        return (u - sigma * self.covariance.sqrt_apply(eps)) / alpha

    def eps_from_v(self, u: Data, t: Time, v: Data) -> Data:
        r"""$\hat\varepsilon = \sigma_t y_t + \alpha_t \hat v$ in white coordinates
        $y_t = \Sigma^{-1/2} u_t$, where $v = \alpha_t \varepsilon - \sigma_t y_0$
        (Salimans & Ho 2022)."""
        alpha, sigma = self.alpha_sigma(t, u)
        return sigma * self.covariance.inv_sqrt_apply(u) + alpha * v

    def prior_log_prob(self, u: Data) -> Float[Array, ""]:
        y = self.covariance.inv_sqrt_apply(u)
        return -0.5 * (jnp.sum(y**2) + y.size * jnp.log(2 * jnp.pi) + self.covariance.logdet())

    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Data:
        return self.covariance.sqrt_apply(jax.random.normal(key, shape))

    def initial_state(self, key: PRNGKeyArray, x: Data) -> tuple[Data, Float[Array, ""]]:
        del key
        return x, jnp.zeros((), x.dtype)

    def decoder_nll(self, u: Data, x: Data, num_levels: int) -> Float[Array, ""]:
        r"""VDM's decoder: per dimension a categorical over the bins with location
        $z_0/\alpha_0$ and scale $\sigma_0 \sqrt{\Sigma_{ii}}/\alpha_0$."""
        alpha, sigma = self.alpha_sigma(0.0, u)
        scale = sigma * jnp.sqrt(self.covariance.variance()) / alpha
        return discretized_gaussian_nll(x, u / alpha, scale, num_levels)

    def log_det_scale(self, t: Time, u: Data) -> Float[Array, ""]:
        r"""$\log\det(\sigma_t \Sigma^{1/2}) = \sum_i \log\sigma_{t,i}
        + \tfrac12\log\det\Sigma$, with $\log\sigma^2 = -\operatorname{softplus}(-\gamma)$."""
        log_sigma = -0.5 * jax.nn.softplus(-self.gamma(t, u))
        return jnp.sum(jnp.broadcast_to(log_sigma, u.shape)) + 0.5 * self.covariance.logdet()

    def prior_kl(self, u0: Data) -> Float[Array, ""]:
        r"""$\mathrm{KL}(\mathcal N(\alpha_1 x, \sigma_1^2\Sigma) \Vert \mathcal N(0, \Sigma))
        = \tfrac12 \sum_i [\alpha_1^2 (y_i^2 - 1) - \log \sigma_1^2]$, $y = \Sigma^{-1/2}x$."""
        gamma = self.gamma(1.0, u0)
        y = self.covariance.inv_sqrt_apply(u0)
        alpha2 = jax.nn.sigmoid(-gamma)
        # -log sigma^2 = softplus(-gamma), exact for any gamma.
        return 0.5 * jnp.sum(alpha2 * (y**2 - 1.0) + jax.nn.softplus(-gamma) * jnp.ones_like(y))

    def diffusion_loss(self, t: Time, eps: Data, eps_hat: Data) -> Float[Array, ""]:
        r"""$\tfrac12 \sum_i \gamma_i'(t) (\varepsilon_i - \hat\varepsilon_i)^2$ (VDM eq. 17)."""
        _, dgamma = self.gamma_and_derivative(t, eps)
        return 0.5 * jnp.sum(dgamma * jnp.square(eps - eps_hat))

    def diffusion_loss_discrete(
        self, s: Time, t: Time, eps: Data, eps_hat: Data
    ) -> Float[Array, ""]:
        r"""$\tfrac12 \sum_i \operatorname{expm1}(\gamma_i(t) - \gamma_i(s))
        (\varepsilon_i - \hat\varepsilon_i)^2$ (VDM eq. 14)."""
        delta = self.gamma(t, eps) - self.gamma(s, eps)
        return 0.5 * jnp.sum(jnp.expm1(delta) * jnp.square(eps - eps_hat))


def require_vp(process: AbstractProcess, what: str, instead: str) -> AbstractVPProcess:
    """Return `process` if it is VP-type, else raise a `TypeError` naming `instead`."""
    if not isinstance(process, AbstractVPProcess):
        raise TypeError(
            f"{what} needs a VP-type process (VP, DiagonalVP, NonIsotropicVP), got "
            f"{type(process).__name__}; use {instead}."
        )
    return process


class VP(AbstractVPProcess):
    r"""The scalar variance-preserving process of VDM, $x_t = \alpha_t x_0 + \sigma_t
    \varepsilon$ with one $\gamma(t)$ for all dimensions.

    **Arguments:** `schedule`: any scalar schedule (linear, cosine, learned).
    """

    schedule: AbstractSchedule
    covariance: AbstractCovariance = eqx.field(default_factory=IdentityCovariance, init=False)

    def check_gamma_shape(self, gamma_shape: tuple[int, ...], data_shape: tuple[int, ...]):
        if gamma_shape != ():
            raise ValueError(
                f"VP needs a scalar schedule, but it returns gamma of shape {gamma_shape}; "
                "use DiagonalVP for one gamma per dimension."
            )


class DiagonalVP(AbstractVPProcess):
    r"""A VP process with one schedule per dimension, $x_{t,i} = \alpha_{t,i} x_{0,i} +
    \sigma_{t,i}\varepsilon_i$: the process MuLAN's `condition(z)` returns.

    **Arguments:** `schedule`: a schedule whose `schedule(t)` is shaped like the data
    (a scalar schedule also works and broadcasts).
    """

    schedule: AbstractSchedule
    covariance: AbstractCovariance = eqx.field(default_factory=IdentityCovariance, init=False)

    def check_gamma_shape(self, gamma_shape: tuple[int, ...], data_shape: tuple[int, ...]):
        if gamma_shape not in ((), data_shape):
            raise ValueError(
                f"The schedule returns gamma of shape {gamma_shape}, but the data have shape "
                f"{data_shape}: DiagonalVP needs one gamma per data dimension (or a scalar)."
            )
