r"""Samplers, one example per call (`jax.vmap` for a batch), from $t = 1$ to $t = 0$.

- `sample_ode`: the probability-flow ODE $\dot u = f - \tfrac12 G G^\top s_\theta$,
  integrated backwards with diffrax (adaptive or fixed step).
- `sample_sde`: the reverse-time SDE $du = [f - G G^\top s_\theta]\,dt + G\,d\bar W$
  (Anderson 1982), integrated with diffrax in reversed time $r = 1 - t$ so the Brownian
  motion runs forwards; Brownian increments come from a `VirtualBrownianTree`.
- `sample_ancestral`: VDM's ancestral sampler, $z_s \sim p(z_s \mid z_t)$ on a grid of
  $T$ steps (VP-type processes; NI-DDPM's eqs. 18-19 for `NonIsotropicVP`).
- `sample_ddim`: the deterministic DDIM update (Song, Meng & Ermon 2021; VP-type;
  NI-DDPM's eqs. 20-21).
- `sample_annealed_langevin`: annealed Langevin dynamics over the noise levels of a
  variance-exploding process (SMLD, Song & Ermon 2019; NI-SMLD).
- `mulan_sample`: MuLAN's $z \sim p(z)$, then any of the above on `condition(z)`, then
  the decoder.

Each returns the state at $t = 0$, a draw from (an approximation of) $p_0$, or with
`denoise=True` its denoised mean $\mathbb E[x_0 \mid z_0]$.
"""

from collections.abc import Callable
from typing import Literal

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._custom_types import Data, Gamma, State, Time
from ._discrete import to_levels
from ._parameterizations import AbstractParameterization, score_fn
from ._processes import (
    AbstractProcess,
    AbstractVPProcess,
    MuLAN,
    NonIsotropicVE,
    require_vp,
)
from ._schedules import alpha_sigma


def sample_ode(
    process: AbstractProcess,
    score_fn: Callable[[State, Time], State],
    key: PRNGKeyArray,
    shape: tuple[int, ...],
    *,
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_steps: int | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    t0: float = 0.0,
    t1: float = 1.0,
    max_steps: int = 16_384,
) -> State:
    """Draw from the prior at `t1` and solve the probability-flow ODE back to `t0`.

    **Arguments:**

    - `process`, `score_fn`: the forward process and `score_fn(u, t)`.
    - `key`: PRNG key for the prior draw.
    - `shape`: the state shape of one example.
    - `solver`: a diffrax ODE solver.
    - `rtol`, `atol`: tolerances of the default adaptive `PIDController`.
    - `num_steps`: fixed steps instead (a `ConstantStepSize`), when given.
    - `stepsize_controller`: any diffrax controller, replacing both.
    - `t0`, `t1`, `max_steps`: integration range and step limit.
    """
    dt0 = None
    if stepsize_controller is None:
        if num_steps is None:
            stepsize_controller = diffrax.PIDController(rtol=rtol, atol=atol)
        else:
            stepsize_controller = diffrax.ConstantStepSize()
    if num_steps is not None:
        dt0 = -(t1 - t0) / num_steps

    def vector_field(t, u, score):
        return process.probability_flow(u, t, score(u, t))

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        solver,
        t1,
        t0,
        dt0,
        process.prior_sample(key, shape),
        args=score_fn,
        stepsize_controller=stepsize_controller,
        saveat=diffrax.SaveAt(t1=True),
        max_steps=max_steps,
    )
    assert sol.ys is not None
    return sol.ys[-1]


class _AdditiveNoiseTerm(diffrax.AbstractTerm):
    r"""The reverse SDE's noise term $G(t_1 - r)\,dW_r$, $G = \operatorname{diag}(g) B$.

    Its vector field is the scale $g(t_1 - r)$ and `prod` applies $g \odot B$ to the
    Brownian increment (or Levy area): linear in both, and only arrays, also where the
    stochastic Runge-Kutta solvers `vmap` or difference the vector field.
    """

    process: AbstractProcess
    brownian: diffrax.AbstractBrownianPath
    t1: float

    def vf(self, t, y, args) -> State:
        return jnp.broadcast_to(self.process.diffusion_scale(self.t1 - t, y), y.shape)

    def contr(self, t0, t1, **kwargs):
        return self.brownian.evaluate(t0, t1, **kwargs)

    def prod(self, vf: State, control: State) -> State:
        return vf * self.process.noise_apply(control)


def sample_sde(
    process: AbstractProcess,
    score_fn: Callable[[State, Time], State],
    key: PRNGKeyArray,
    shape: tuple[int, ...],
    *,
    solver: diffrax.AbstractSolver = diffrax.Euler(),
    num_steps: int = 1000,
    t0: float = 0.0,
    t1: float = 1.0,
) -> State:
    r"""Draw from the prior at `t1` and integrate the reverse-time SDE to `t0`.

    **Arguments:**

    - `process`, `score_fn`: the forward process and `score_fn(u, t)`.
    - `key`: PRNG key for the prior draw and the Brownian motion.
    - `shape`: the state shape of one example.
    - `solver`: a diffrax SDE solver: `diffrax.Euler()` (Euler-Maruyama) or a higher-order
      one for additive noise such as `diffrax.ShARK()` or `diffrax.SRA1()` (the noise of
      every process here is additive, so Ito and Stratonovich coincide).
    - `num_steps`: fixed steps on `[t0, t1]`.
    - `t0`, `t1`: integration range.
    """
    key_prior, key_brownian = jax.random.split(key)
    u1 = process.prior_sample(key_prior, shape)
    dr = (t1 - t0) / num_steps
    brownian = diffrax.VirtualBrownianTree(
        0.0,
        t1 - t0,
        tol=dr / 4,
        shape=jax.ShapeDtypeStruct(shape, u1.dtype),
        key=key_brownian,
        levy_area=diffrax.SpaceTimeLevyArea,
    )

    def drift(r, u, score):
        t = t1 - r
        return -process.reverse_drift(u, t, score(u, t))

    terms = diffrax.MultiTerm(diffrax.ODETerm(drift), _AdditiveNoiseTerm(process, brownian, t1))
    sol = diffrax.diffeqsolve(
        terms,
        solver,
        0.0,
        t1 - t0,
        dr,
        u1,
        args=score_fn,
        stepsize_controller=diffrax.ConstantStepSize(),
        saveat=diffrax.SaveAt(t1=True),
        max_steps=num_steps + 1,
    )
    assert sol.ys is not None
    return sol.ys[-1]


def _time_grid(num_steps: int) -> jnp.ndarray:
    return jnp.arange(num_steps, 0, -1) / num_steps


def _denoised(
    process: AbstractVPProcess | NonIsotropicVE,
    score_fn: Callable[[State, Time], State],
    z: Data,
    t: Time,
) -> Data:
    r"""$\hat x_0(z_t) = \mathbb E[x_0 \mid z_t]$ from the score (Tweedie; NI-DDPM eq. 23)."""
    return process.x0_from_eps(z, t, process.eps_from_score(z, t, score_fn(z, t)))


def _posterior_std(gamma_s: Gamma, gamma_t: Gamma) -> Gamma:
    r"""$\sigma_s\sqrt{c}$: the standard deviation of $q(z_s \mid z_t, x_0)$."""
    return jnp.sqrt(jax.nn.sigmoid(gamma_s) * -jnp.expm1(gamma_s - gamma_t))


def _beta_std(gamma_s: Gamma, gamma_t: Gamma) -> Gamma:
    r"""$\sqrt{\beta_{t,s}}$, $\beta_{t,s} = 1 - \alpha_t^2/\alpha_s^2$ with
    $\log\alpha^2 = -\operatorname{softplus}(\gamma)$."""
    return jnp.sqrt(-jnp.expm1(jax.nn.softplus(gamma_s) - jax.nn.softplus(gamma_t)))


_ANCESTRAL_STD = {"posterior": _posterior_std, "beta": _beta_std}


def sample_ancestral(
    process: AbstractProcess,
    score_fn: Callable[[State, Time], State],
    key: PRNGKeyArray,
    shape: tuple[int, ...],
    *,
    num_steps: int = 1000,
    variance: Literal["posterior", "beta"] = "posterior",
    denoise: bool = False,
) -> Data:
    r"""VDM's ancestral sampler (Kingma et al. 2021, appendix A.4) on $T$ uniform steps.

    From $t = i/T$ to $s = (i-1)/T$, with $c = -\operatorname{expm1}(\gamma_s - \gamma_t)
    = 1 - \mathrm{SNR}(t)/\mathrm{SNR}(s)$ and $\hat\varepsilon$ from the score,
    $$z_s = \frac{\alpha_s}{\alpha_t}\left(z_t - \sigma_t c\, \Sigma^{1/2}\hat\varepsilon\right)
    + \sqrt{v}\, \Sigma^{1/2} \xi, \qquad \xi \sim \mathcal N(0, I),$$
    with $v = \sigma_s^2 c$, the mean and variance of $q(z_s \mid z_t, \hat x_0)$
    (DDPM's $\tilde\beta_t$; NI-DDPM's eq. 18), or $v = \beta_{t,s} = 1 -
    \alpha_t^2/\alpha_s^2$ (DDPM's other choice $\sigma_t^2 = \beta_t$; NI-DDPM's
    eq. 19). Elementwise for per-dimension schedules. With `BetaSchedule(betas)` and
    `num_steps=len(betas) - 1, denoise=True` this is (NI-)DDPM's sampler exactly.

    **Arguments:**

    - `process` (VP-type), `score_fn`, `key`, `shape`, and `num_steps` $T$.
    - `variance`: `"posterior"` ($\sigma_s^2 c$) or `"beta"` ($\beta_{t,s}$).
    - `denoise`: finish with $\hat x_0(z_0) = (z_0 - \sigma_0 \Sigma^{1/2}
      \hat\varepsilon)/\alpha_0$ (eq. 23; DDPM's noiseless last step), one more score
      evaluation.
    """
    if variance not in _ANCESTRAL_STD:
        raise ValueError(f"Unknown variance {variance!r}; use 'posterior' or 'beta'.")
    noise_std = _ANCESTRAL_STD[variance]
    vp = require_vp(process, "sample_ancestral", "sample_ode or sample_sde")
    key_prior, key_steps = jax.random.split(key)
    z1 = vp.prior_sample(key_prior, shape)

    def step(z, args):
        t, k = args
        s = t - 1.0 / num_steps
        gamma_t, gamma_s = vp.gamma(t, z), vp.gamma(s, z)
        alpha_t, sigma_t = alpha_sigma(gamma_t)
        alpha_s, _ = alpha_sigma(gamma_s)
        c = -jnp.expm1(gamma_s - gamma_t)
        eps_hat = vp.covariance.sqrt_apply(vp.eps_from_score(z, t, score_fn(z, t)))
        mean = alpha_s / alpha_t * (z - sigma_t * c * eps_hat)
        noise = vp.covariance.sqrt_apply(jax.random.normal(k, shape, z.dtype))
        return mean + noise_std(gamma_s, gamma_t) * noise, None

    keys = jax.random.split(key_steps, num_steps)
    z0, _ = jax.lax.scan(step, z1, (_time_grid(num_steps), keys))
    return _denoised(vp, score_fn, z0, 0.0) if denoise else z0


def sample_ddim(
    process: AbstractProcess,
    score_fn: Callable[[State, Time], State],
    key: PRNGKeyArray,
    shape: tuple[int, ...],
    *,
    num_steps: int = 100,
    denoise: bool = False,
) -> Data:
    r"""The deterministic DDIM sampler on $T$ uniform steps.

    $\hat x_0 = (z_t - \sigma_t \Sigma^{1/2}\hat\varepsilon)/\alpha_t$ and
    $z_s = \alpha_s \hat x_0 + \sigma_s \Sigma^{1/2} \hat\varepsilon$ (NI-DDPM's eqs.
    20-21): a first-order discretisation of the probability-flow ODE, exact when
    $\hat\varepsilon$ is constant.

    **Arguments:** `process` (VP-type), `score_fn`, `key` (for the prior draw), `shape`,
    `num_steps` $T$, and `denoise` (finish with $\hat x_0(z_0)$, as `sample_ancestral`).
    """
    vp = require_vp(process, "sample_ddim", "sample_ode or sample_sde")
    z1 = vp.prior_sample(key, shape)

    def step(z, t):
        s = t - 1.0 / num_steps
        eps_hat = vp.eps_from_score(z, t, score_fn(z, t))
        alpha_s, sigma_s = vp.alpha_sigma(s, z)
        x0_hat = vp.x0_from_eps(z, t, eps_hat)
        return alpha_s * x0_hat + sigma_s * vp.covariance.sqrt_apply(eps_hat), None

    z0, _ = jax.lax.scan(step, z1, _time_grid(num_steps))
    return _denoised(vp, score_fn, z0, 0.0) if denoise else z0


def sample_annealed_langevin(
    process: AbstractProcess,
    score_fn: Callable[[State, Time], State],
    key: PRNGKeyArray,
    shape: tuple[int, ...],
    *,
    num_levels: int = 10,
    num_inner: int = 100,
    step_size: float | Float[Array, ""] = 2e-5,
    denoise: bool = False,
) -> Data:
    r"""Annealed Langevin dynamics (Song & Ermon 2019, algorithm 1) with the
    non-isotropic score: NI-SMLD (Voleti et al. 2022, appendices D-E).

    From a prior draw, at the noise levels $\sigma_l = \sigma_{t_l}$,
    $t_l$ = `linspace(1, 0, num_levels)`, `num_inner` steps each of
    $$x \leftarrow x + \tfrac{a_l}{2}\,\Sigma\, s_\theta(x, t_l) + \sqrt{a_l}\,
    \Sigma^{1/2} z, \qquad a_l = \epsilon\,\sigma_l^2 / \sigma_L^2, \quad
    z \sim \mathcal N(0, I).$$
    This is plain Langevin dynamics in the white coordinates $y = \Sigma^{-1/2} x$ (whose
    score is $\Sigma^{1/2} s$), so it targets $p_{t_l}$ for any $\Sigma$; correlated noise
    $\Sigma^{1/2} z$ with the unpreconditioned drift $\tfrac{a}{2}s$ would not.

    **Arguments:**

    - `process`: a `NonIsotropicVE`.
    - `score_fn`, `key`, `shape`: as the other samplers.
    - `num_levels`: $L \ge 2$, the number of noise levels (the last one at $t = 0$).
    - `num_inner`: Langevin steps per level (SMLD: 100).
    - `step_size`: $\epsilon$, the step at the last level (SMLD: $2 \cdot 10^{-5}$ for
      $\sigma_L = 0.01$).
    - `denoise`: finish with Tweedie's $\hat x_0 = x + \sigma_L^2 \Sigma s_\theta(x, 0)$
      (as NCSNv2), one more score evaluation.
    """
    if not isinstance(process, NonIsotropicVE):
        raise TypeError(
            "sample_annealed_langevin needs a variance-exploding process (NonIsotropicVE), "
            f"got {type(process).__name__}; use sample_ancestral, sample_ode or sample_sde."
        )
    if num_levels < 2:
        raise ValueError(f"num_levels must be at least 2 (t = 1 to t = 0), got {num_levels}.")
    ve = process
    key_prior, key_levels = jax.random.split(key)
    times = jnp.linspace(1.0, 0.0, num_levels)
    last_variance = ve.sigma(times[-1]) ** 2

    def level(x, args):
        t, k = args
        a = step_size * ve.sigma(t) ** 2 / last_variance

        def inner(x, k):
            drift = ve.covariance.sqrt_apply(ve.covariance.sqrt_apply(score_fn(x, t)))
            noise = ve.covariance.sqrt_apply(jax.random.normal(k, shape, x.dtype))
            return x + 0.5 * a * drift + jnp.sqrt(a) * noise, None

        x, _ = jax.lax.scan(inner, x, jax.random.split(k, num_inner))
        return x, None

    keys = jax.random.split(key_levels, num_levels)
    x0, _ = jax.lax.scan(level, ve.prior_sample(key_prior, shape), (times, keys))
    return _denoised(ve, score_fn, x0, times[-1]) if denoise else x0


def mulan_sample(
    mulan: MuLAN,
    net: Callable[..., Data],
    key: PRNGKeyArray,
    sampler: Callable[..., Data],
    *,
    num_levels: int = 256,
    parameterization: str | AbstractParameterization = "eps",
    **sampler_kwargs,
) -> Int[Array, "*shape"]:
    r"""One sample from MuLAN: $z \sim p(z)$, reverse `condition(z)`, decode.

    The reverse process runs with any core sampler (`sample_ancestral`, `sample_ddim`,
    `sample_ode`, `sample_sde`) on the score of `mulan.denoiser(net, z)`; the result
    $z_0$ is decoded to the level nearest $z_0 / \alpha_0$, the mode of VDM's decoder.

    **Arguments:**

    - `mulan`, `net`: the model and its network (see `MuLAN.denoiser`).
    - `key`: PRNG key for $z$ and the sampler.
    - `sampler`: a core sampler, `sampler(process, score_fn, key, shape, **kwargs)`.
    - `num_levels`: the number of levels of the data.
    - `parameterization`: what `net` predicts (`"eps"`, `"v"`, ... or an object).
    - `sampler_kwargs`: passed to `sampler` (e.g. `num_steps`).

    **Returns:** integer levels `0 .. num_levels - 1`, shaped like the data.
    """
    key_z, key_sample = jax.random.split(key)
    z = mulan.prior.sample(key_z)
    process = mulan.condition(z)
    score = score_fn(process, mulan.denoiser(net, z), parameterization)
    z0 = sampler(process, score, key_sample, mulan.data_shape, **sampler_kwargs)
    alpha0, _ = process.alpha_sigma(0.0, z0)
    return to_levels(z0 / alpha0, num_levels)
