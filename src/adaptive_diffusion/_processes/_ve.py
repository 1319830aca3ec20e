r"""The non-isotropic variance-exploding process (NI-SMLD; Voleti, Oberman & Pal 2022,
appendices D-E; SMLD/NCSN of Song & Ermon 2019 for $\Sigma = I$).

$$x_t = x_0 + \sigma_t \Sigma^{1/2} \varepsilon, \qquad \sigma_t^2 = e^{\gamma(t)},$$
the marginal of $dx = g(t)\,\Sigma^{1/2} dW$ with $g^2 = d\sigma_t^2/dt = \sigma_t^2\gamma'(t)$.
The schedule is the same object as for VP: $\gamma = -\log\mathrm{SNR} = \log\sigma_t^2$,
so `LinearSchedule(2 log sigma_min, 2 log sigma_max)` is SMLD's geometric sequence
$\sigma_t = \sigma_{\min}(\sigma_{\max}/\sigma_{\min})^t$. The bound's diffusion terms depend
on the schedule only through the SNR and are the same as VP's.
"""

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._covariance import AbstractCovariance
from .._custom_types import Data, Time
from .._discrete import discretized_gaussian_nll
from .._schedules import AbstractSchedule, gamma_and_derivative
from ._base import AbstractProcess


class NonIsotropicVE(AbstractProcess):
    r"""$x_t = x_0 + \sigma_t \Sigma^{1/2} \varepsilon$, $\sigma_t^2 = e^{\gamma(t)}$, with
    prior $\mathcal N(0, \sigma_1^2 \Sigma)$.

    Sample it with `sample_annealed_langevin` (NI-SMLD), `sample_sde` or `sample_ode`;
    `ode_log_likelihood` and `nelbo` work as for any process. $\sigma_1$ must dwarf the
    data (SMLD: the largest pairwise distance) for the prior to match $p_1$.

    **Arguments:**

    - `schedule`: a scalar schedule, read as $\gamma(t) = \log \sigma_t^2$.
    - `covariance`: the noise covariance (`IdentityCovariance()` gives plain SMLD).
    """

    schedule: AbstractSchedule
    covariance: AbstractCovariance

    def gamma_and_derivative(self, t: Time) -> tuple[Float[Array, ""], Float[Array, ""]]:
        r"""$(\gamma(t), \gamma'(t))$, with $\gamma = \log\sigma_t^2$ a scalar."""
        gamma, dgamma = gamma_and_derivative(self.schedule, t)
        if gamma.shape != ():
            raise ValueError(
                f"NonIsotropicVE needs a scalar schedule, but it returns gamma of shape "
                f"{gamma.shape}."
            )
        return gamma, dgamma

    def sigma(self, t: Time) -> Float[Array, ""]:
        r"""$\sigma_t = e^{\gamma(t)/2}$."""
        return jnp.exp(0.5 * self.gamma_and_derivative(t)[0])

    def perturb(self, u0: Data, t: Time, eps: Data) -> Data:
        return u0 + self.sigma(t) * self.covariance.sqrt_apply(eps)

    def drift(self, u: Data, t: Time) -> Data:
        return jnp.zeros_like(u)

    def diffusion_scale(self, t: Time, u: Data) -> Float[Array, ""]:
        r"""$g(t) = \sqrt{e^{\gamma}\gamma'}$."""
        gamma, dgamma = self.gamma_and_derivative(t)
        return jnp.sqrt(jnp.exp(gamma) * dgamma)

    def noise_apply(self, w: Data) -> Data:
        return self.covariance.sqrt_apply(w)

    def score_from_eps(self, u: Data, t: Time, eps: Data) -> Data:
        return -self.covariance.inv_sqrt_apply(eps) / self.sigma(t)

    def eps_from_score(self, u: Data, t: Time, score: Data) -> Data:
        return -self.sigma(t) * self.covariance.sqrt_apply(score)

    def x0_from_eps(self, u: Data, t: Time, eps: Data) -> Data:
        r"""$\hat x_0 = x_t - \sigma_t \Sigma^{1/2}\hat\varepsilon$; for the exact
        $\hat\varepsilon$ = `eps_from_score`, Tweedie's $\mathbb E[x_0 \mid x_t] =
        x_t + \sigma_t^2 \Sigma \nabla\log p_t(x_t)$."""
        return u - self.sigma(t) * self.covariance.sqrt_apply(eps)

    def prior_log_prob(self, u: Data) -> Float[Array, ""]:
        gamma_1, _ = self.gamma_and_derivative(1.0)
        y = self.covariance.inv_sqrt_apply(u)
        return -0.5 * (
            jnp.sum(y**2) * jnp.exp(-gamma_1)
            + y.size * (math.log(2 * math.pi) + gamma_1)
            + self.covariance.logdet()
        )

    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Data:
        return self.sigma(1.0) * self.covariance.sqrt_apply(jax.random.normal(key, shape))

    def initial_state(self, key: PRNGKeyArray, x: Data) -> tuple[Data, Float[Array, ""]]:
        del key
        return x, jnp.zeros((), x.dtype)

    def decoder_nll(self, u: Data, x: Data, num_levels: int) -> Float[Array, ""]:
        r"""Per dimension a categorical over the bins with location $z_0$ and scale
        $\sigma_0\sqrt{\Sigma_{ii}}$ (VDM's decoder with $\alpha = 1$)."""
        scale = self.sigma(0.0) * jnp.sqrt(self.covariance.variance())
        return discretized_gaussian_nll(x, u, scale, num_levels)

    def log_det_scale(self, t: Time, u: Data) -> Float[Array, ""]:
        r"""$\log\det(\sigma_t\Sigma^{1/2}) = \tfrac n2 \gamma(t) + \tfrac12\log\det\Sigma$."""
        gamma, _ = self.gamma_and_derivative(t)
        return 0.5 * (u.size * gamma + self.covariance.logdet())

    def prior_kl(self, u0: Data) -> Float[Array, ""]:
        r"""$\mathrm{KL}(\mathcal N(x, \sigma_1^2\Sigma) \Vert \mathcal N(0, \sigma_1^2\Sigma))
        = \tfrac12 \lVert\Sigma^{-1/2}x\rVert^2 / \sigma_1^2$."""
        gamma_1, _ = self.gamma_and_derivative(1.0)
        y = self.covariance.inv_sqrt_apply(u0)
        return 0.5 * jnp.sum(y**2) * jnp.exp(-gamma_1)

    def diffusion_loss(self, t: Time, eps: Data, eps_hat: Data) -> Float[Array, ""]:
        r"""$\tfrac12 \gamma'(t) \lVert\varepsilon - \hat\varepsilon\rVert^2$, as for VP:
        $\tfrac12 g^2 \lVert\Sigma^{1/2}(\hat s - s)\rVert^2$ with
        $\hat s - s = -\Sigma^{-1/2}(\hat\varepsilon - \varepsilon)/\sigma_t$."""
        _, dgamma = self.gamma_and_derivative(t)
        return 0.5 * dgamma * jnp.sum(jnp.square(eps - eps_hat))

    def diffusion_loss_discrete(
        self, s: Time, t: Time, eps: Data, eps_hat: Data
    ) -> Float[Array, ""]:
        r"""$\tfrac12 \operatorname{expm1}(\gamma(t) - \gamma(s))
        \lVert\varepsilon - \hat\varepsilon\rVert^2$: in white coordinates the KL is
        $\tfrac12(\mathrm{SNR}_s - \mathrm{SNR}_t)\lVert x_0 - \hat x_0\rVert^2$ with
        $x_0 - \hat x_0 = \sigma_t(\hat\varepsilon - \varepsilon)$, as for VP."""
        delta = self.gamma_and_derivative(t)[0] - self.gamma_and_derivative(s)[0]
        return 0.5 * jnp.expm1(delta) * jnp.sum(jnp.square(eps - eps_hat))
