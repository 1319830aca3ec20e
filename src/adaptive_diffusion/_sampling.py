r"""Samplers, one example per call (`jax.vmap` for a batch), from $t = 1$ to $t_{\min}$.

Every sampler works on every process with the capability it needs, through the
process's methods only: it draws a state from the prior (constant parts included, such
as MuLAN's latent $z \sim p(z)$, which then stay fixed), moves the diffused part, and
returns the state at $t_{\min}$ (or its denoised mean); `process.data(u)` reads the
data back and `process.decode(u, num_levels)` gives the decoder's mode.

- `sample_ode`: the probability-flow ODE $\dot u = f - \tfrac12 G G^\top s_\theta$,
  integrated backwards with diffrax (SDE processes).
- `sample_sde`: the reverse-time SDE $du = [f - G G^\top s_\theta]\,dt + G\,d\bar W$
  (Anderson 1982), integrated with diffrax in reversed time $r = 1 - t$ so the Brownian
  motion runs forwards; Brownian increments come from a `VirtualBrownianTree`.
- `sample_ancestral`: $u_s \sim q(u_s \mid u_t, \hat u_0)$ on a grid of $T$ steps (VDM's
  sampler; NI-DDPM's eqs. 18-19 for `NonIsotropicVP`), drawing each step's noise from the
  process's own family (`sample_noise`: DDPM with Laplace noise steps with Laplace noise).
- `sample_ddim`: the deterministic DDIM update $u_s = A_s \hat u_0 + L_s \hat\varepsilon$
  (Song, Meng & Ermon 2021; NI-DDPM's eqs. 20-21). These two need only a linear process.
- `sample_annealed_langevin`: annealed Langevin dynamics over the noise levels (SMLD,
  Song & Ermon 2019; NI-SMLD), preconditioned by the marginal's noise covariance.

With `denoise=True` a sampler ends with the denoised mean $\mathbb E[u_0 \mid u_{t_{\min}}]$.
"""

import abc
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._custom_types import Noise, State, Time
from ._likelihood import ODESolve
from ._losses import unit_to_time
from ._parameterizations import AbstractScore, as_score
from ._processes import (
    AbstractLinearGaussianProcess,
    AbstractLinearProcess,
    AbstractSDEProcess,
    require_capability,
)


def sample_ode(
    process: AbstractSDEProcess,
    score_fn: Callable[[State, Time], Noise],
    key: PRNGKeyArray,
    shape: tuple[int, ...],
    *,
    solve: ODESolve = ODESolve(),
) -> State:
    """Draw from the prior at t = 1 and solve the probability-flow ODE back to `t_min`.

    **Arguments:**

    - `process`, `score_fn`: the forward process and `score_fn(u, t)`.
    - `key`: PRNG key for the prior draw.
    - `shape`: the shape of the data (the process builds its state around it).
    - `solve`: solver, step-size controller and step limit (`ODESolve`; for fixed steps,
      `ODESolve(stepsize_controller=diffrax.ConstantStepSize(), dt0=1 / num_steps)`).
    """
    require_capability(process, AbstractSDEProcess, "sample_ode")
    score = as_score(score_fn)
    diffused, constant = process.partition(process.prior_sample(key, shape))

    def vector_field(t, y, args):
        score, constant = args
        return score.probability_flow(process, process.combine(y, constant), t)

    sol = solve(vector_field, diffused, 1.0, process.t_min, (score, constant))
    assert sol.ys is not None
    return process.combine(sol.ys[-1], constant)


class _AdditiveNoiseTerm(diffrax.AbstractTerm):
    r"""The reverse SDE's noise term $G(1 - r)\,dW_r$, $G = \operatorname{diag}(g) B$.

    Its vector field is the scale $g(1 - r)$ and `prod` applies $g \odot B$ to the
    Brownian increment (or Levy area): linear in both, and only arrays, also where the
    stochastic Runge-Kutta solvers `vmap` or difference the vector field.
    """

    process: AbstractSDEProcess
    brownian: diffrax.AbstractBrownianPath
    constant: PyTree

    def vf(self, t, y, args) -> Noise:
        u = self.process.combine(y, self.constant)
        return jnp.broadcast_to(self.process.diffusion_scale(u, 1.0 - t), y.shape)

    def contr(self, t0, t1, **kwargs):
        return self.brownian.evaluate(t0, t1, **kwargs)

    def prod(self, vf: Noise, control: Noise) -> Noise:
        return vf * self.process.noise_apply(control)


def sample_sde(
    process: AbstractSDEProcess,
    score_fn: Callable[[State, Time], Noise],
    key: PRNGKeyArray,
    shape: tuple[int, ...],
    *,
    solver: diffrax.AbstractSolver = diffrax.Euler(),
    num_steps: int = 1000,
) -> State:
    r"""Draw from the prior at t = 1 and integrate the reverse-time SDE to `t_min`.

    **Arguments:**

    - `process`, `score_fn`: the forward process and `score_fn(u, t)`.
    - `key`: PRNG key for the prior draw and the Brownian motion.
    - `shape`: the shape of the data.
    - `solver`: a diffrax SDE solver: `diffrax.Euler()` (Euler-Maruyama) or a higher-order
      one for additive noise such as `diffrax.ShARK()` or `diffrax.SRA1()` (the noise of
      every process here is additive, so Ito and Stratonovich coincide).
    - `num_steps`: fixed steps on `[t_min, 1]`.
    """
    require_capability(process, AbstractSDEProcess, "sample_sde")
    score = as_score(score_fn)
    key_prior, key_brownian = jax.random.split(key)
    diffused, constant = process.partition(process.prior_sample(key_prior, shape))
    span = 1.0 - process.t_min
    dr = span / num_steps
    brownian = diffrax.VirtualBrownianTree(
        0.0,
        span,
        tol=dr / 4,
        shape=jax.ShapeDtypeStruct(diffused.shape, diffused.dtype),
        key=key_brownian,
        levy_area=diffrax.SpaceTimeLevyArea,
    )

    def drift(r, y, args):
        score, constant = args
        u, t = process.combine(y, constant), 1.0 - r
        return -process.reverse_drift(u, t, score(u, t))

    terms = diffrax.MultiTerm(
        diffrax.ODETerm(drift), _AdditiveNoiseTerm(process, brownian, constant)
    )
    sol = diffrax.diffeqsolve(
        terms,
        solver,
        0.0,
        span,
        dr,
        diffused,
        args=(score, constant),
        stepsize_controller=diffrax.ConstantStepSize(),
        saveat=diffrax.SaveAt(t1=True),
        max_steps=num_steps + 1,
    )
    assert sol.ys is not None
    return process.combine(sol.ys[-1], constant)


def _step_times(num_steps: int) -> Float[Array, " steps"]:
    """The unit times $1, (T-1)/T, \\dots, 1/T$ each step starts from."""
    return jnp.arange(num_steps, 0, -1) / num_steps


def _denoised(process: AbstractLinearProcess, score: AbstractScore, u: State, t: Time) -> State:
    r"""$\mathbb E[u_0 \mid u_t]$ from the score (Tweedie; NI-DDPM eq. 23)."""
    x0 = process.x0_from_eps(u, t, score.eps(process, u, t))
    return process.combine(x0, process.partition(u)[1])


class AbstractAncestralVariance(eqx.Module):
    r"""The variance of the ancestral sampler's step $t \to s$."""

    @abc.abstractmethod
    def noise(self, process: AbstractLinearProcess, u: State, t: Time, s: Time, xi: Noise) -> Noise:
        """White `xi` scaled to the step's noise."""


class PosteriorVariance(AbstractAncestralVariance):
    r"""The variance of $q(u_s \mid u_t, u_0)$ (DDPM's $\tilde\beta_t$; NI-DDPM's eq. 18):
    for VP $\sigma_s^2 c$, $c = 1 - \mathrm{SNR}(t)/\mathrm{SNR}(s)$."""

    def noise(self, process: AbstractLinearProcess, u: State, t: Time, s: Time, xi: Noise) -> Noise:
        return process.posterior_noise(u, t, s, xi)


class BetaVariance(AbstractAncestralVariance):
    r"""The variance of the forward transition $q(u_t \mid u_s)$ (DDPM's other choice
    $\sigma_t^2 = \beta_t$; NI-DDPM's eq. 19): for VP $1 - \alpha_t^2/\alpha_s^2$."""

    def noise(self, process: AbstractLinearProcess, u: State, t: Time, s: Time, xi: Noise) -> Noise:
        return process.transition_noise(u, t, s, xi)


def sample_ancestral(
    process: AbstractLinearProcess,
    score_fn: Callable[[State, Time], Noise],
    key: PRNGKeyArray,
    shape: tuple[int, ...],
    *,
    num_steps: int = 1000,
    variance: AbstractAncestralVariance = PosteriorVariance(),
    denoise: bool = False,
) -> State:
    r"""VDM's ancestral sampler (Kingma et al. 2021, appendix A.4) on $T$ uniform steps.

    From $t_i$ to $s = t_{i-1}$, $u_s$ = `process.ancestral_mean(u_t, t, s, eps_hat)` plus
    `variance`'s noise, with $\hat\varepsilon$ from the score; for VP
    $$z_s = \frac{\alpha_s}{\alpha_t}\left(z_t - \sigma_t c\, \Sigma^{1/2}\hat\varepsilon\right)
    + \sqrt{v}\, \Sigma^{1/2} \xi, \qquad c = -\operatorname{expm1}(\gamma_s - \gamma_t).$$
    With `BetaSchedule(betas)` and `num_steps=len(betas) - 1, denoise=True` this is
    (NI-)DDPM's sampler exactly.

    **Arguments:**

    - `process`, `score_fn`, `key`, `shape` (of the data), and `num_steps` $T$.
    - `variance`: `PosteriorVariance()` or `BetaVariance()`.
    - `denoise`: finish with $\hat u_0(u_{t_{\min}})$ (eq. 23; DDPM's noiseless last
      step), one more score evaluation.
    """
    require_capability(process, AbstractLinearProcess, "sample_ancestral")
    score = as_score(score_fn)
    key_prior, key_steps = jax.random.split(key)
    diffused, constant = process.partition(process.prior_sample(key_prior, shape))

    def step(y, args):
        unit, k = args
        t = unit_to_time(process, unit)
        s = unit_to_time(process, unit - 1.0 / num_steps)
        u = process.combine(y, constant)
        mean = process.ancestral_mean(u, t, s, score.eps(process, u, t))
        xi = process.sample_noise(k, y)
        return mean + variance.noise(process, u, t, s, xi), None

    keys = jax.random.split(key_steps, num_steps)
    y0, _ = jax.lax.scan(step, diffused, (_step_times(num_steps), keys))
    u0 = process.combine(y0, constant)
    return _denoised(process, score, u0, process.t_min) if denoise else u0


def sample_ddim(
    process: AbstractLinearProcess,
    score_fn: Callable[[State, Time], Noise],
    key: PRNGKeyArray,
    shape: tuple[int, ...],
    *,
    num_steps: int = 100,
    denoise: bool = False,
) -> State:
    r"""The deterministic DDIM sampler on $T$ uniform steps.

    $\hat u_0$ = `x0_from_eps(u_t, t, eps_hat)` and $u_s$ = `perturb(u_0_hat, s, eps_hat)`
    $= A_s \hat u_0 + L_s \hat\varepsilon$ (for VP NI-DDPM's eqs. 20-21): a first-order
    discretisation of the probability-flow ODE, exact when $\hat\varepsilon$ is constant.

    **Arguments:** `process`, `score_fn`, `key` (for the prior draw), `shape` (of the
    data), `num_steps` $T$, and `denoise` (finish with $\hat u_0$, as `sample_ancestral`).
    """
    require_capability(process, AbstractLinearProcess, "sample_ddim")
    score = as_score(score_fn)
    diffused, constant = process.partition(process.prior_sample(key, shape))

    def step(y, unit):
        t = unit_to_time(process, unit)
        s = unit_to_time(process, unit - 1.0 / num_steps)
        u = process.combine(y, constant)
        eps_hat = score.eps(process, u, t)
        x0 = process.combine(process.x0_from_eps(u, t, eps_hat), constant)
        return process.partition(process.perturb(x0, s, eps_hat))[0], None

    y0, _ = jax.lax.scan(step, diffused, _step_times(num_steps))
    u0 = process.combine(y0, constant)
    return _denoised(process, score, u0, process.t_min) if denoise else u0


def sample_annealed_langevin(
    process: AbstractLinearGaussianProcess,
    score_fn: Callable[[State, Time], Noise],
    key: PRNGKeyArray,
    shape: tuple[int, ...],
    *,
    num_noise_levels: int = 10,
    num_inner: int = 100,
    step_size: float | Float[Array, ""] = 0.2,
    denoise: bool = False,
) -> State:
    r"""Annealed Langevin dynamics (Song & Ermon 2019, algorithm 1), preconditioned by the
    marginal's noise covariance: NI-SMLD (Voleti et al. 2022, appendices D-E) for
    `NonIsotropicVE`, and a valid sampler of every linear-Gaussian process.

    From a prior draw, at the noise levels $t_l$ = `linspace(1, t_min, L)`, `num_inner`
    steps each of
    $$u \leftarrow u + \tfrac{\delta}{2}\, L_l L_l^\top s_\theta(u, t_l) + \sqrt{\delta}\,
    L_l z, \qquad z \sim \mathcal N(0, I),$$
    with $L_l$ the marginal's noise factor at $t_l$ (`marginal_scale`;
    $L L^\top s = -L(\texttt{eps\_from\_score}(s))$). This is plain Langevin dynamics with
    step $\delta$ in the white coordinates of the level's noise, so it targets $p_{t_l}$ for
    any process. For NI-SMLD, $L_l L_l^\top = \sigma_l^2\Sigma$ and this is SMLD's step
    $a_l = \epsilon\,\sigma_l^2/\sigma_L^2$ with $\epsilon = \delta\sigma_L^2$: the step size
    here is SMLD's $\epsilon$ relative to the last level's variance, so one value suits
    every noise scale (SMLD's $\epsilon = 2 \cdot 10^{-5}$ at $\sigma_L = 0.01$ is
    $\delta = 0.2$, the default).

    **Arguments:**

    - `process`, `score_fn`, `key`, `shape`: as the other samplers.
    - `num_noise_levels`: $L \ge 2$, the number of noise levels (the last one at $t_{\min}$).
    - `num_inner`: Langevin steps per level (SMLD: 100).
    - `step_size`: $\delta$, the step relative to each level's noise variance.
    - `denoise`: finish with Tweedie's $\hat u_0 = u + L L^\top s_\theta(u, t_{\min})$ (as
      NCSNv2), one more score evaluation.
    """
    if num_noise_levels < 2:
        raise ValueError(
            f"num_noise_levels must be at least 2 (t = 1 to t_min), got {num_noise_levels}."
        )
    require_capability(process, AbstractLinearGaussianProcess, "sample_annealed_langevin")
    score = as_score(score_fn)
    key_prior, key_levels = jax.random.split(key)
    diffused, constant = process.partition(process.prior_sample(key_prior, shape))
    times = jnp.linspace(1.0, process.t_min, num_noise_levels)

    def level(y, args):
        t, k = args

        def inner(y, k):
            u = process.combine(y, constant)
            drift = -process.marginal_scale(u, t, score.eps(process, u, t))
            xi = jax.random.normal(k, y.shape, y.dtype)
            noise = process.marginal_scale(u, t, xi)
            return y + 0.5 * step_size * drift + jnp.sqrt(step_size) * noise, None

        y, _ = jax.lax.scan(inner, y, jax.random.split(k, num_inner))
        return y, None

    keys = jax.random.split(key_levels, num_noise_levels)
    y0, _ = jax.lax.scan(level, diffused, (times, keys))
    u0 = process.combine(y0, constant)
    return _denoised(process, score, u0, times[-1]) if denoise else u0
