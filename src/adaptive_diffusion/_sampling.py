r"""Samplers, one example per call (`jax.vmap` for a batch), from $t = 1$ to $t = 0$.

- `sample_ode`: the probability-flow ODE $\dot u = f - \tfrac12 G G^\top s_\theta$,
  integrated backwards with diffrax (adaptive or fixed step).
- `sample_sde`: the reverse-time SDE $du = [f - G G^\top s_\theta]\,dt + G\,d\bar W$
  (Anderson 1982), integrated with diffrax in reversed time $r = 1 - t$ so the Brownian
  motion runs forwards; Brownian increments come from a `VirtualBrownianTree`.
- `sample_ancestral`: VDM's ancestral sampler, $z_s \sim p(z_s \mid z_t)$ on a grid of
  $T$ steps (VP-type processes).
- `sample_ddim`: the deterministic DDIM update (Song, Meng & Ermon 2021; VP-type).

Each returns the state at $t = 0$, a draw from (an approximation of) $p_0$.
"""

from collections.abc import Callable

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from ._custom_types import Data, State, Time
from ._processes import AbstractProcess, require_vp
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


def sample_ancestral(
    process: AbstractProcess,
    score_fn: Callable[[State, Time], State],
    key: PRNGKeyArray,
    shape: tuple[int, ...],
    *,
    num_steps: int = 1000,
) -> Data:
    r"""VDM's ancestral sampler (Kingma et al. 2021, appendix A.4) on $T$ uniform steps.

    From $t = i/T$ to $s = (i-1)/T$, with $c = -\operatorname{expm1}(\gamma_s - \gamma_t)
    = 1 - \mathrm{SNR}(t)/\mathrm{SNR}(s)$ and $\hat\varepsilon$ from the score,
    $$z_s = \frac{\alpha_s}{\alpha_t}\left(z_t - \sigma_t c\, \Sigma^{1/2}\hat\varepsilon\right)
    + \sigma_s \sqrt{c}\, \Sigma^{1/2} \xi, \qquad \xi \sim \mathcal N(0, I),$$
    the mean and variance of $q(z_s \mid z_t, \hat x_0)$. Elementwise for per-dimension
    schedules.

    **Arguments:** `process` (VP-type), `score_fn`, `key`, `shape`, and `num_steps` $T$.
    """
    vp = require_vp(process, "sample_ancestral", "sample_ode or sample_sde")
    key_prior, key_steps = jax.random.split(key)
    z1 = vp.prior_sample(key_prior, shape)

    def step(z, args):
        t, k = args
        s = t - 1.0 / num_steps
        gamma_t, gamma_s = vp.gamma(t, z), vp.gamma(s, z)
        alpha_t, sigma_t = alpha_sigma(gamma_t)
        alpha_s, sigma_s = alpha_sigma(gamma_s)
        c = -jnp.expm1(gamma_s - gamma_t)
        eps_hat = vp.covariance.sqrt_apply(vp.eps_from_score(z, t, score_fn(z, t)))
        mean = alpha_s / alpha_t * (z - sigma_t * c * eps_hat)
        noise = vp.covariance.sqrt_apply(jax.random.normal(k, shape, z.dtype))
        return mean + sigma_s * jnp.sqrt(c) * noise, None

    keys = jax.random.split(key_steps, num_steps)
    z0, _ = jax.lax.scan(step, z1, (_time_grid(num_steps), keys))
    return z0


def sample_ddim(
    process: AbstractProcess,
    score_fn: Callable[[State, Time], State],
    key: PRNGKeyArray,
    shape: tuple[int, ...],
    *,
    num_steps: int = 100,
) -> Data:
    r"""The deterministic DDIM sampler on $T$ uniform steps.

    $\hat x_0 = (z_t - \sigma_t \Sigma^{1/2}\hat\varepsilon)/\alpha_t$ and
    $z_s = \alpha_s \hat x_0 + \sigma_s \Sigma^{1/2} \hat\varepsilon$: a first-order
    discretisation of the probability-flow ODE, exact when $\hat\varepsilon$ is constant.

    **Arguments:** `process` (VP-type), `score_fn`, `key` (for the prior draw), `shape`,
    and `num_steps` $T$.
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
    return z0
