r"""The forward-process abstraction.

Every continuous process here is a linear Gaussian SDE on a state `u`,
$$du = f(u, t)\,dt + G(t)\,dW, \qquad u_t = A_t u_0 + L_t \varepsilon, \quad
\varepsilon \sim \mathcal N(0, I),$$
with drift linear in `u` and additive noise $G(t) = \operatorname{diag}(g(t))\,B$: a
time-dependent elementwise scale $g(t)$ times a fixed symmetric operator $B$ (the
identity, $\Sigma^{1/2}$ applied by FFT, or an MDM's $\sqrt{2D}$ on the leading axis).
`AbstractProcess` names what the rest of the library needs from such a process, and
nothing else:

- the marginal `perturb(u0, t, eps)` (and `sample_marginal`, which draws `eps`);
- the SDE: `drift(u, t)`, `diffusion_scale(t, u)` $= g(t)$ and `noise_apply(w)`
  $= B w$, from which $G w$, $G G^\top v$, the probability-flow drift
  $f - \tfrac12 G G^\top \nabla \log p_t$ and the reverse-SDE drift follow;
- the prior at $t = 1$: `prior_log_prob`, `prior_sample`;
- the link between a network's white-noise prediction and the score:
  `score_from_eps` ($-L_t^{-\top}\varepsilon$) and `eps_from_score`;
- the terms of the variational bound: `initial_state` (auxiliary variables and their
  log-density), `decoder_nll` ($-\log p(x \mid u_0)$), `log_det_scale`
  ($\log\lvert\det L_t\rvert$, for $\log q(u_t \mid u_0)$), `prior_kl`, `diffusion_loss`
  (continuous time, $\tfrac12 \lVert G^\top (\hat s - s) \rVert^2$ written in terms of
  $\varepsilon$) and `diffusion_loss_discrete` (the finite-$T$ version).

How each family fits, without changing this class:

- `VP`, `DiagonalVP` (VDM, per-dimension schedules) and `NonIsotropicVP` share
  `AbstractVPProcess`: $u_t = \alpha_t x + \sigma_t \Sigma^{1/2} \varepsilon$ with a
  covariance operator $\Sigma$ (identity, or a Gaussian free field applied by FFT), so the
  non-isotropic process is VP conjugated by $\Sigma^{1/2}$: only `covariance` changes.
- `MuLAN` is not a process but a family of them: `condition(z)` returns a `DiagonalVP`
  whose schedule depends on the latent; its bound adds the latent KL around `nelbo`.
- `LinearMDM` has state `(K + 1, *x.shape)` mixed on the leading axis by `(K+1, K+1)`
  matrices $A_t$ and $\operatorname{chol}(\Sigma_t)$; `initial_state` samples the
  auxiliary variables from $q(v_0 \mid x)$ and returns $\log q(v_0 \mid x)$, which the
  bound subtracts.
- Discrete-time `DDPM` with non-Gaussian noise has no SDE: it is its own class with its
  ancestral sampler and noise-prediction loss, not a subclass of this one.

All methods act on a single example; batch with `jax.vmap`.
"""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._custom_types import Data, State, Time


class AbstractProcess(eqx.Module):
    """A continuous-time linear Gaussian forward process over one example."""

    @abc.abstractmethod
    def perturb(self, u0: State, t: Time, eps: State) -> State:
        r"""The marginal map $u_t = A_t u_0 + L_t \varepsilon$ for white `eps`."""

    def sample_marginal(self, key: PRNGKeyArray, u0: State, t: Time) -> tuple[State, State]:
        r"""Draw $u_t \sim q(u_t \mid u_0)$.

        **Returns:** `(u_t, eps)` with `eps` the white noise used, shaped like `u0`.
        """
        eps = jax.random.normal(key, u0.shape, u0.dtype)
        return self.perturb(u0, t, eps), eps

    @abc.abstractmethod
    def drift(self, u: State, t: Time) -> State:
        r"""The forward SDE drift $f(u, t)$."""

    @abc.abstractmethod
    def diffusion_scale(self, t: Time, u: State) -> State:
        r"""The elementwise scale $g(t)$ of $G(t) = \operatorname{diag}(g(t)) B$, broadcastable
        to the state `u` (whose shape it may need to check)."""

    @abc.abstractmethod
    def noise_apply(self, w: State) -> State:
        r"""$B w$ for the fixed symmetric factor $B$ of $G(t) = \operatorname{diag}(g(t)) B$."""

    def diffusion(self, t: Time, w: State) -> State:
        r"""$G(t)\,w$: the diffusion applied to a Brownian increment `w`."""
        return self.diffusion_scale(t, w) * self.noise_apply(w)

    def diffusion_covariance(self, t: Time, v: State) -> State:
        r"""$G(t) G(t)^\top v = g \odot B B (g \odot v)$."""
        g = self.diffusion_scale(t, v)
        return g * self.noise_apply(self.noise_apply(g * v))

    def probability_flow(self, u: State, t: Time, score: State) -> State:
        r"""The probability-flow ODE drift $f(u, t) - \tfrac12 G G^\top \nabla\log p_t(u)$."""
        return self.drift(u, t) - 0.5 * self.diffusion_covariance(t, score)

    def reverse_drift(self, u: State, t: Time, score: State) -> State:
        r"""The reverse-time SDE drift $f(u, t) - G G^\top \nabla\log p_t(u)$ (Anderson 1982)."""
        return self.drift(u, t) - self.diffusion_covariance(t, score)

    @abc.abstractmethod
    def score_from_eps(self, u: State, t: Time, eps: State) -> State:
        r"""The score implied by a white-noise prediction: $-L_t^{-\top}\hat\varepsilon$."""

    @abc.abstractmethod
    def eps_from_score(self, u: State, t: Time, score: State) -> State:
        r"""The white-noise prediction implied by a score: $-L_t^\top s$."""

    @abc.abstractmethod
    def prior_log_prob(self, u: State) -> Float[Array, ""]:
        """Log-density of the prior at t = 1, in nats."""

    @abc.abstractmethod
    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> State:
        """A draw from the prior at t = 1 of the given state shape."""

    @abc.abstractmethod
    def initial_state(self, key: PRNGKeyArray, x: Data) -> tuple[State, Float[Array, ""]]:
        r"""The state $u_0$ for data `x` and $\log q(u_0 \mid x)$ in nats.

        Zero for processes whose state is the data itself.
        """

    @abc.abstractmethod
    def decoder_nll(self, u: State, x: Data, num_levels: int) -> Float[Array, ""]:
        r"""$-\log p(x \mid u_{t=0} = u)$ in nats for `x` on the grid of `num_levels` bins."""

    @abc.abstractmethod
    def log_det_scale(self, t: Time, u: State) -> Float[Array, ""]:
        r"""$\log \lvert\det L_t\rvert$, so that $\log q(u_t \mid u_0) = -\tfrac12
        \lVert\varepsilon\rVert^2 - \log\lvert\det L_t\rvert - \tfrac{n}{2}\log 2\pi$."""

    def marginal_log_prob(self, t: Time, eps: State) -> Float[Array, ""]:
        r"""$\log q(u_t \mid u_0)$ at $u_t$ = `perturb(u0, t, eps)`, in nats."""
        return -0.5 * (jnp.sum(eps**2) + eps.size * math.log(2 * math.pi)) - self.log_det_scale(
            t, eps
        )

    @abc.abstractmethod
    def prior_kl(self, u0: State) -> Float[Array, ""]:
        r"""$\mathrm{KL}(q(u_1 \mid u_0) \,\Vert\, p(u_1))$ in nats."""

    @abc.abstractmethod
    def diffusion_loss(self, t: Time, eps: State, eps_hat: State) -> Float[Array, ""]:
        r"""The continuous-time diffusion-loss integrand at `t`, in nats.

        Its expectation over $t \sim U(0, 1)$ is the diffusion term of the bound.
        """

    @abc.abstractmethod
    def diffusion_loss_discrete(
        self, s: Time, t: Time, eps: State, eps_hat: State
    ) -> Float[Array, ""]:
        r"""The KL between the forward posterior and the model at step $t \to s < t$, in nats.

        The finite-$T$ diffusion term is the sum of these over the $T$ steps.
        """
