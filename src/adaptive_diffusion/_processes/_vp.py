r"""The scaled-Gaussian processes: VP (VDM), DiagonalVP, and the base they share with the
non-isotropic VP and VE processes.

$$x_t = a_t x_0 + s_t \Sigma^{1/2} \varepsilon, \qquad \gamma(t) = \log(s_t^2 / a_t^2),$$

a signal scale $a_t$ and a noise scale $s_t$ (scalars, or one per dimension) set by the
negative log-SNR schedule $\gamma(t)$, and a noise covariance operator $\Sigma$ (the
identity, or a Gaussian free field applied by FFT). A family states only its log-scales
as functions of $\gamma$ and its prior's variance:

- variance preserving (VP, DiagonalVP, NonIsotropicVP): $a^2 = \operatorname{sigmoid}(-\gamma)$,
  $s^2 = \operatorname{sigmoid}(\gamma)$, prior $\mathcal N(0, \Sigma)$;
- variance exploding (NonIsotropicVE): $a = 1$, $s^2 = e^\gamma$, prior
  $\mathcal N(0, s_1^2\Sigma)$.

Everything else follows. It is the marginal of $dx = f\,x\,dt + g\,\Sigma^{1/2} dW$ with
$f = \tfrac{d}{dt}\log a_t = \tfrac12 \tfrac{d \log a^2}{d\gamma}\gamma'$ and
$g^2 = \tfrac{ds_t^2}{dt} - 2 f s_t^2 = s_t^2 \gamma'$ (since $\log s^2 - \log a^2 = \gamma$);
in the white coordinates $y = \Sigma^{-1/2} x$ each dimension is a scalar Gaussian
channel, which is how the bound below is computed, and all its diffusion terms depend on
the schedule only through $\gamma$ (VDM).
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._covariance import AbstractCovariance, IdentityCovariance
from .._custom_types import Data, Gamma, Time
from .._discrete import discretized_gaussian_nll, to_levels
from .._schedules import AbstractSchedule, gamma_and_derivative
from ._base import AbstractDataStateProcess, AbstractSDEProcess


class AbstractScaledGaussianProcess(AbstractSDEProcess, AbstractDataStateProcess):
    r"""$x_t = a_t x_0 + s_t \Sigma^{1/2}\varepsilon$ with schedule $\gamma(t) = \log(s_t^2/a_t^2)$.

    Subclasses set `schedule` and `covariance`, say which shapes of $\gamma$ they accept
    (`check_gamma_shape`), and give `log_scales` and `log_prior_variance`.
    """

    schedule: eqx.AbstractVar[AbstractSchedule]
    covariance: eqx.AbstractVar[AbstractCovariance]

    @abc.abstractmethod
    def check_gamma_shape(self, gamma_shape: tuple[int, ...], data_shape: tuple[int, ...]):
        """Raise `ValueError` naming the fix if the schedule's output shape does not fit."""

    @abc.abstractmethod
    def log_scales(self, gamma: Gamma) -> tuple[Gamma, Gamma]:
        r"""$(\log a^2, \log s^2)$ as functions of $\gamma$, exact for any $\gamma$."""

    @abc.abstractmethod
    def log_prior_variance(self, gamma_1: Gamma) -> Gamma:
        r"""$\log p^2$ of the prior $\mathcal N(0, p^2 \Sigma)$, from $\gamma(1)$."""

    @property
    def t_min(self) -> float:
        return 0.0

    def gamma_and_rate(self, u: Data, t: Time) -> tuple[Gamma, Gamma]:
        r"""$(\gamma(t), \gamma'(t))$, checked against the data shape."""
        gamma, dgamma = gamma_and_derivative(self.schedule, t)
        self.check_gamma_shape(gamma.shape, u.shape)
        return gamma, dgamma

    def gamma(self, u: Data, t: Time) -> Gamma:
        return self.gamma_and_rate(u, t)[0]

    def scales(self, u: Data, t: Time) -> tuple[Gamma, Gamma]:
        r"""$(a_t, s_t)$, scalar or per-dimension."""
        log_a2, log_s2 = self.log_scales(self.gamma(u, t))
        return jnp.exp(0.5 * log_a2), jnp.exp(0.5 * log_s2)

    def perturb(self, u0: Data, t: Time, eps: Data) -> Data:
        a, s = self.scales(u0, t)
        return a * u0 + s * self.covariance.sqrt_apply(eps)

    def marginal_scale(self, u: Data, t: Time, eps: Data) -> Data:
        _, s = self.scales(u, t)
        return s * self.covariance.sqrt_apply(eps)

    def drift(self, u: Data, t: Time) -> Data:
        r"""$f x$ with $f = \tfrac12 \tfrac{d\log a^2}{d\gamma}\gamma'$."""
        gamma, dgamma = self.gamma_and_rate(u, t)
        _, dlog_a2 = jax.jvp(lambda g: self.log_scales(g)[0], (gamma,), (jnp.ones_like(gamma),))
        return 0.5 * dlog_a2 * dgamma * u

    def diffusion_scale(self, u: Data, t: Time) -> Gamma:
        r"""$g(t) = s_t\sqrt{\gamma'(t)}$."""
        gamma, dgamma = self.gamma_and_rate(u, t)
        return jnp.sqrt(jnp.exp(self.log_scales(gamma)[1]) * dgamma)

    def noise_apply(self, w: Data) -> Data:
        return self.covariance.sqrt_apply(w)

    def probability_flow_eps(self, u: Data, t: Time, eps: Data) -> Data:
        r"""$f x + \tfrac12 g^2 \Sigma^{1/2}\hat\varepsilon / s_t$: one application of
        $\Sigma^{1/2}$, against three through `score_from_eps` and `diffusion_covariance`."""
        gamma, dgamma = self.gamma_and_rate(u, t)
        _, s = self.scales(u, t)
        return self.drift(u, t) + 0.5 * s * dgamma * self.covariance.sqrt_apply(eps)

    def score_from_eps(self, u: Data, t: Time, eps: Data) -> Data:
        _, s = self.scales(u, t)
        return -self.covariance.inv_sqrt_apply(eps) / s

    def eps_from_score(self, u: Data, t: Time, score: Data) -> Data:
        _, s = self.scales(u, t)
        return -s * self.covariance.sqrt_apply(score)

    def eps_from_x0(self, u: Data, t: Time, x0: Data) -> Data:
        r"""$\hat\varepsilon = \Sigma^{-1/2}(x_t - a_t \hat x_0) / s_t$."""
        a, s = self.scales(u, t)
        return self.covariance.inv_sqrt_apply(u - a * x0) / s

    def x0_from_eps(self, u: Data, t: Time, eps: Data) -> Data:
        r"""$\hat x_0 = (x_t - s_t \Sigma^{1/2} \hat\varepsilon) / a_t$."""
        a, s = self.scales(u, t)
        return (u - s * self.covariance.sqrt_apply(eps)) / a

    def _unit_coordinates(self, u: Data, t: Time) -> tuple[Gamma, Gamma, Data]:
        r"""$(\bar\alpha, \bar\sigma, \bar y)$ with
        $\bar\alpha^2 = \operatorname{sigmoid}(-\gamma)$,
        $\bar\sigma^2 = \operatorname{sigmoid}(\gamma)$ and
        $\bar y = \Sigma^{-1/2} x_t\, \bar\alpha / a_t = \bar\alpha y_0 + \bar\sigma\varepsilon$:
        the process rescaled to unit variance, where the velocity is defined."""
        gamma = self.gamma(u, t)
        log_a2, _ = self.log_scales(gamma)
        rescale = jnp.exp(0.5 * (jax.nn.log_sigmoid(-gamma) - log_a2))
        y = self.covariance.inv_sqrt_apply(u) * rescale
        return jnp.sqrt(jax.nn.sigmoid(-gamma)), jnp.sqrt(jax.nn.sigmoid(gamma)), y

    def eps_from_v(self, u: Data, t: Time, v: Data) -> Data:
        r"""$\hat\varepsilon = \bar\sigma \bar y + \bar\alpha \hat v$ for the velocity
        $v = \bar\alpha\varepsilon - \bar\sigma y_0$ of the unit-variance coordinates
        $\bar y = \bar\alpha y_0 + \bar\sigma \varepsilon$ (Salimans & Ho 2022; for VP,
        $\bar y = \Sigma^{-1/2} x_t$)."""
        alpha, sigma, y = self._unit_coordinates(u, t)
        return sigma * y + alpha * v

    def v_from_eps(self, u: Data, t: Time, eps: Data) -> Data:
        r"""$\hat v = (\hat\varepsilon - \bar\sigma \bar y)/\bar\alpha
        = e^{\operatorname{softplus}(\gamma)/2}\hat\varepsilon - e^{\gamma/2}\bar y$."""
        gamma = self.gamma(u, t)
        _, _, y = self._unit_coordinates(u, t)
        return jnp.exp(0.5 * jax.nn.softplus(gamma)) * eps - jnp.exp(0.5 * gamma) * y

    def prior_log_prob(self, u: Data) -> Float[Array, ""]:
        log_p2 = self.log_prior_variance(self.gamma(u, 1.0))
        y = self.covariance.inv_sqrt_apply(u)
        n = y.size
        return -0.5 * (
            jnp.sum(y**2 * jnp.exp(-log_p2))
            + n * jnp.log(2 * jnp.pi)
            + jnp.sum(jnp.broadcast_to(log_p2, y.shape))
            + self.covariance.logdet()
        )

    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Data:
        white = jax.random.normal(key, shape)
        log_p2 = self.log_prior_variance(self.gamma(white, 1.0))
        return jnp.exp(0.5 * log_p2) * self.covariance.sqrt_apply(white)

    def decoder_nll(self, u: Data, u0: Data, num_levels: int) -> Float[Array, ""]:
        r"""VDM's decoder: per dimension a categorical over the bins with location
        $z_0/a_0$ and scale $s_0 \sqrt{\Sigma_{ii}}/a_0$."""
        a, s = self.scales(u, 0.0)
        scale = s * jnp.sqrt(self.covariance.variance()) / a
        return discretized_gaussian_nll(u0, u / a, scale, num_levels)

    def decode(self, u: Data, num_levels: int) -> Int[Array, "*shape"]:
        """The decoder's mode: the bin nearest $z_0 / a_0$."""
        a, _ = self.scales(u, 0.0)
        return to_levels(u / a, num_levels)

    def log_det_scale(self, u: Data, t: Time) -> Float[Array, ""]:
        r"""$\log\det(s_t \Sigma^{1/2})
        = \tfrac12\sum_i \log s_{t,i}^2 + \tfrac12\log\det\Sigma$."""
        _, log_s2 = self.log_scales(self.gamma(u, t))
        return 0.5 * (jnp.sum(jnp.broadcast_to(log_s2, u.shape)) + self.covariance.logdet())

    def prior_kl(self, u0: Data) -> Float[Array, ""]:
        r"""$\mathrm{KL}(\mathcal N(a_1 x, s_1^2\Sigma) \Vert \mathcal N(0, p^2\Sigma))
        = \tfrac12 \sum_i [\tfrac{a_1^2}{p^2} y_i^2 + \rho - \log(1 + \rho)]$ with
        $y = \Sigma^{-1/2}x$ and $\rho = s_1^2/p^2 - 1$, written with `expm1` so that it is
        exact for $s_1 \approx p$ (VP at large $\gamma_1$)."""
        gamma = self.gamma(u0, 1.0)
        log_a2, log_s2 = self.log_scales(gamma)
        log_p2 = self.log_prior_variance(gamma)
        y = self.covariance.inv_sqrt_apply(u0)
        log_ratio = jnp.broadcast_to(log_s2 - log_p2, y.shape)
        signal = jnp.exp(log_a2 - log_p2) * y**2
        return 0.5 * jnp.sum(signal + jnp.expm1(log_ratio) - log_ratio)

    def diffusion_loss(self, u: Data, t: Time, eps: Data, eps_hat: Data) -> Float[Array, ""]:
        r"""$\tfrac12 \sum_i \gamma_i'(t) (\varepsilon_i - \hat\varepsilon_i)^2$ (VDM eq. 17):
        $\tfrac12 g^2 \lVert\Sigma^{1/2}(\hat s - s)\rVert^2$ with
        $\hat s - s = -\Sigma^{-1/2}(\hat\varepsilon - \varepsilon)/s_t$."""
        _, dgamma = self.gamma_and_rate(u, t)
        return 0.5 * jnp.sum(dgamma * jnp.square(eps - eps_hat))

    def diffusion_loss_discrete(
        self, u: Data, s: Time, t: Time, eps: Data, eps_hat: Data
    ) -> Float[Array, ""]:
        r"""$\tfrac12 \sum_i \operatorname{expm1}(\gamma_i(t) - \gamma_i(s))
        (\varepsilon_i - \hat\varepsilon_i)^2$ (VDM eq. 14): in white coordinates
        $\tfrac12(\mathrm{SNR}_s - \mathrm{SNR}_t)\lVert x_0 - \hat x_0\rVert^2$."""
        delta = self.gamma(u, t) - self.gamma(u, s)
        return 0.5 * jnp.sum(jnp.expm1(delta) * jnp.square(eps - eps_hat))

    def _step_factors(self, u: Data, t: Time, s: Time) -> tuple[Gamma, Gamma, Gamma, Gamma]:
        r"""$(a_s/a_t,\ s_t,\ s_s,\ c)$ with $c = 1 - \mathrm{SNR}(t)/\mathrm{SNR}(s)
        = -\operatorname{expm1}(\gamma_s - \gamma_t)$."""
        gamma_t, gamma_s = self.gamma(u, t), self.gamma(u, s)
        log_a2_t, log_s2_t = self.log_scales(gamma_t)
        log_a2_s, log_s2_s = self.log_scales(gamma_s)
        ratio = jnp.exp(0.5 * (log_a2_s - log_a2_t))
        c = -jnp.expm1(gamma_s - gamma_t)
        return ratio, jnp.exp(0.5 * log_s2_t), jnp.exp(0.5 * log_s2_s), c

    def ancestral_mean(self, u: Data, t: Time, s: Time, eps_hat: Data) -> Data:
        r"""$\frac{a_s}{a_t}\left(x_t - s_t c\, \Sigma^{1/2}\hat\varepsilon\right)$ (VDM
        appendix A.4; NI-DDPM eq. 18)."""
        ratio, s_t, _, c = self._step_factors(u, t, s)
        return ratio * (u - s_t * c * self.covariance.sqrt_apply(eps_hat))

    def posterior_noise(self, u: Data, t: Time, s: Time, xi: Data) -> Data:
        r"""$s_s \sqrt{c}\, \Sigma^{1/2}\xi$."""
        _, _, s_s, c = self._step_factors(u, t, s)
        return s_s * jnp.sqrt(c) * self.covariance.sqrt_apply(xi)

    def transition_noise(self, u: Data, t: Time, s: Time, xi: Data) -> Data:
        r"""$s_t \sqrt{c}\, \Sigma^{1/2}\xi$: $s_t^2 c = s_t^2 - (a_t/a_s)^2 s_s^2$, for VP
        $\beta_{t,s} = 1 - \alpha_t^2/\alpha_s^2$ (NI-DDPM eq. 19)."""
        _, s_t, _, c = self._step_factors(u, t, s)
        return s_t * jnp.sqrt(c) * self.covariance.sqrt_apply(xi)


class AbstractVPProcess(AbstractScaledGaussianProcess):
    r"""The variance-preserving scales $a^2 = \operatorname{sigmoid}(-\gamma)$,
    $s^2 = \operatorname{sigmoid}(\gamma)$ (VDM eq. 3) and the prior $\mathcal N(0, \Sigma)$."""

    def log_scales(self, gamma: Gamma) -> tuple[Gamma, Gamma]:
        r"""$(-\operatorname{softplus}(\gamma), -\operatorname{softplus}(-\gamma))$."""
        return -jax.nn.softplus(gamma), -jax.nn.softplus(-gamma)

    def log_prior_variance(self, gamma_1: Gamma) -> Gamma:
        return jnp.zeros_like(gamma_1)


def check_scalar_schedule(name: str, gamma_shape: tuple[int, ...], fix: str):
    """Raise `ValueError` if a schedule is not scalar, naming the process and the fix."""
    if gamma_shape != ():
        raise ValueError(
            f"{name} needs a scalar schedule, but it returns gamma of shape {gamma_shape}; " + fix
        )


class VP(AbstractVPProcess):
    r"""The scalar variance-preserving process of VDM, $x_t = \alpha_t x_0 + \sigma_t
    \varepsilon$ with one $\gamma(t)$ for all dimensions.

    **Arguments:** `schedule`: any scalar schedule (linear, cosine, learned).
    """

    schedule: AbstractSchedule
    covariance: AbstractCovariance = eqx.field(default_factory=IdentityCovariance, init=False)

    def check_gamma_shape(self, gamma_shape: tuple[int, ...], data_shape: tuple[int, ...]):
        check_scalar_schedule("VP", gamma_shape, "use DiagonalVP for one gamma per dimension.")


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
