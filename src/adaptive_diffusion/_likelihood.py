r"""Likelihoods: the probability-flow ODE (diffrax), dequantised bits/dim, the dense VLB.

The probability-flow ODE $\dot u = \tilde f(u, t) = f(u, t) - \tfrac12 G G^\top \nabla
\log p_t(u)$ moves $p_0$ to $p_1$, and along its solution
$\tfrac{d}{dt}\log p_t(u_t) = -\nabla\!\cdot\tilde f(u_t, t)$ (Chen et al. 2018; Song et al.
2021, appendix D.2). Hence
$$\log p_0(u_0) = \log p_1(u_1) + \int_0^1 \nabla\!\cdot\tilde f(u_t, t)\,dt,$$
with $p_1$ replaced by the process's prior: the result is the exact log-density at $t = 0$
of the model defined by the prior and the ODE (for the exact score, the process's own
marginal $p_0$, up to the prior's mismatch with $p_1$).
"""

import abc
import math
from collections.abc import Callable
from typing import Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._custom_types import Data, State, Time
from ._discrete import check_discrete, to_levels
from ._losses import (
    NELBO,
    AbstractTimeSampler,
    AntitheticTimes,
    assemble_nelbo,
    batch_bound,
    endpoint_terms,
    mulan_nelbo,
)
from ._parameterizations import (
    AbstractParameterization,
    as_parameterization,
    score_fn,
)
from ._processes import AbstractProcess, MuLAN


class AbstractTraceEstimator(eqx.Module):
    r"""Computes $f(u)$ and (an estimate of) $\operatorname{tr} \partial f / \partial u$."""

    @abc.abstractmethod
    def init(self, key: PRNGKeyArray, u: State) -> Float[Array, " probes *state"]:
        """Draw what the estimator keeps fixed for a whole solve (the probes)."""

    @abc.abstractmethod
    def __call__(
        self, f: Callable[[State], State], u: State, probes: Float[Array, " probes *state"]
    ) -> tuple[State, Float[Array, ""]]:
        """`(f(u), divergence)`."""


class ExactTrace(AbstractTraceEstimator):
    r"""The exact divergence $\sum_i e_i^\top J e_i$ from $D$ forward-mode products.

    Costs $D$ Jacobian-vector products per evaluation: for small dimension only.
    """

    def init(self, key: PRNGKeyArray, u: State) -> Float[Array, " probes *state"]:
        del key
        return jnp.eye(u.size, dtype=u.dtype).reshape(u.size, *u.shape)

    def __call__(
        self, f: Callable[[State], State], u: State, probes: Float[Array, " probes *state"]
    ) -> tuple[State, Float[Array, ""]]:
        value, jvp = jax.linearize(f, u)
        return value, jnp.sum(jax.vmap(lambda e: jnp.vdot(e, jvp(e)))(probes))


class HutchinsonTrace(AbstractTraceEstimator):
    r"""Hutchinson's unbiased estimate $\tfrac1K \sum_k v_k^\top J v_k$, $\mathbb E[v v^\top] = I$.

    **Arguments:**

    - `num_probes`: $K$, the number of probes, drawn once per solve (an adaptive solver
      needs a fixed vector field).
    - `distribution`: `"rademacher"` ($\pm 1$, the lower-variance default) or `"gaussian"`.
    - `mode`: `"jvp"` (forward mode, one pass alongside the drift) or `"vjp"` (reverse
      mode, as in score_sde's `likelihood.py`).
    """

    num_probes: int = 1
    distribution: Literal["rademacher", "gaussian"] = "rademacher"
    mode: Literal["jvp", "vjp"] = "jvp"

    def __check_init__(self):
        if self.num_probes < 1:
            raise ValueError(f"num_probes must be at least 1, got {self.num_probes}.")
        if self.distribution not in ("rademacher", "gaussian"):
            raise ValueError(
                f"Unknown probe distribution {self.distribution!r}; use 'rademacher' or 'gaussian'."
            )
        if self.mode not in ("jvp", "vjp"):
            raise ValueError(f"Unknown mode {self.mode!r}; use 'jvp' or 'vjp'.")

    def init(self, key: PRNGKeyArray, u: State) -> Float[Array, " probes *state"]:
        shape = (self.num_probes, *u.shape)
        if self.distribution == "rademacher":
            return jax.random.rademacher(key, shape, dtype=u.dtype)
        return jax.random.normal(key, shape, dtype=u.dtype)

    def __call__(
        self, f: Callable[[State], State], u: State, probes: Float[Array, " probes *state"]
    ) -> tuple[State, Float[Array, ""]]:
        if self.mode == "jvp":
            value, jvp = jax.linearize(f, u)
            quad = jax.vmap(lambda v: jnp.vdot(v, jvp(v)))(probes)
        else:
            value, vjp = jax.vjp(f, u)
            quad = jax.vmap(lambda v: jnp.vdot(vjp(v)[0], v))(probes)
        return value, jnp.mean(quad)


def _as_trace_estimator(
    trace: str | AbstractTraceEstimator,
    num_probes: int,
    probe: Literal["rademacher", "gaussian"],
) -> AbstractTraceEstimator:
    if isinstance(trace, AbstractTraceEstimator):
        return trace
    if trace == "exact":
        return ExactTrace()
    if trace == "hutchinson":
        return HutchinsonTrace(num_probes=num_probes, distribution=probe)
    raise ValueError(
        f"Unknown trace {trace!r}; use 'hutchinson', 'exact' or an AbstractTraceEstimator."
    )


class LikelihoodResult(eqx.Module):
    """`log_prob`: $\\log p_0(u_0)$ in nats; `nfe`: evaluations of the ODE's vector field."""

    log_prob: Float[Array, ""]
    nfe: Int[Array, ""]


def _num_function_evaluations(solver: diffrax.AbstractSolver, stats: dict) -> Int[Array, ""]:
    """Vector-field evaluations of a diffrax solve with an explicit Runge-Kutta solver.

    diffrax evaluates every stage of every attempted (accepted or rejected) step; a
    first-same-as-last tableau reuses one stage per step and pays one evaluation at the
    start, which also serves its choice of the first step. Checked against an
    instrumented vector field in the tests, for adaptive and fixed steps.
    """
    if isinstance(solver, diffrax.Euler):
        return stats["num_steps"]
    tableau = getattr(solver, "tableau", None)
    if tableau is None:
        raise ValueError(
            f"Cannot count the evaluations of {type(solver).__name__}; pass an explicit "
            "Runge-Kutta solver such as diffrax.Tsit5(), diffrax.Dopri5() or diffrax.Heun()."
        )
    stages = len(tableau.c) + 1
    if tableau.fsal:
        return 1 + (stages - 1) * stats["num_steps"]
    return stages * stats["num_steps"]


def ode_log_likelihood(
    process: AbstractProcess,
    score_fn: Callable[[State, Time], State],
    u0: State,
    *,
    key: PRNGKeyArray,
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    rtol: float = 1e-5,
    atol: float = 1e-5,
    trace: str | AbstractTraceEstimator = "hutchinson",
    num_probes: int = 1,
    probe: Literal["rademacher", "gaussian"] = "rademacher",
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint(),
    t0: float = 0.0,
    t1: float = 1.0,
    dt0: float | None = None,
    max_steps: int = 16_384,
) -> LikelihoodResult:
    r"""$\log p_{t_0}(u_0)$ in nats by solving the probability-flow ODE from $t_0$ to $t_1$.

    One example per call; `jax.jit` and `jax.vmap` it (each example keeps its own
    adaptive steps). The solve runs at full float32 matrix-multiply precision whatever
    the global default, since TF32/bf16 products ruin likelihoods.

    **Arguments:**

    - `process`: the forward process; its prior gives $\log p_1$.
    - `score_fn`: `score_fn(u, t)` $\approx \nabla_u \log p_t(u)$: a network wrapped by
      `score_fn(process, model, ...)`, or an analytic function.
    - `u0`: one example (a state of the process).
    - `key`: PRNG key for the Hutchinson probes, fixed for the whole solve.
    - `solver`: a diffrax ODE solver.
    - `rtol`, `atol`: tolerances of the default `diffrax.PIDController`.
    - `trace`: `"hutchinson"` (default), `"exact"` (small dimension), or an
      `AbstractTraceEstimator` such as `HutchinsonTrace(mode="vjp")`.
    - `num_probes`, `probe`: the Hutchinson probes' number and distribution.
    - `stepsize_controller`: replaces the default PID controller (with `dt0` for a
      `diffrax.ConstantStepSize`).
    - `adjoint`: how to differentiate through the solve.
    - `t0`, `t1`: integration range.
    - `max_steps`: the solver's step limit.

    **Returns:** `LikelihoodResult(log_prob, nfe)`.
    """
    estimator = _as_trace_estimator(trace, num_probes, probe)
    if stepsize_controller is None:
        stepsize_controller = diffrax.PIDController(rtol=rtol, atol=atol)
    with jax.default_matmul_precision("float32"):
        probes = estimator.init(key, u0)

        def vector_field(t, y, args):
            score, probes = args
            u, _ = y
            return estimator(lambda v: process.probability_flow(v, t, score(v, t)), u, probes)

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(vector_field),
            solver,
            t0,
            t1,
            dt0,
            (u0, jnp.zeros((), u0.dtype)),
            args=(score_fn, probes),
            stepsize_controller=stepsize_controller,
            adjoint=adjoint,
            saveat=diffrax.SaveAt(t1=True),
            max_steps=max_steps,
        )
        assert sol.ys is not None
        u1, integral = sol.ys[0][-1], sol.ys[1][-1]
        log_prob = process.prior_log_prob(u1) + integral
    return LikelihoodResult(log_prob, _num_function_evaluations(solver, sol.stats))


class AbstractDequantization(eqx.Module):
    r"""A distribution $q(y \mid x)$ over continuous $y$ for discrete $x$, with a weight.

    A draw returns $y$ and $w(y)$ such that
    $\log P(x) \ge \mathbb E_{q(y \mid x)}[\log p_0(y) + w(y)]$ for any model
    density $p_0$, the continuous density the probability-flow ODE computes.
    """

    @abc.abstractmethod
    def __call__(
        self, process: AbstractProcess, key: PRNGKeyArray, x: Data, num_levels: int
    ) -> tuple[State, Float[Array, ""]]:
        """`(y, log_weight)` for one draw."""


class UniformDequantization(AbstractDequantization):
    r"""$y = -1 + 2(k + u)/L$, $u \sim U[0, 1)^D$: uniform noise over each bin.

    With bins of width $2/L$, $P(k) = \int_{\text{bin}(k)} p(y)\,dy =
    (2/L)^D\,\mathbb E_u[p(y)]$, so $w = D \log(2/L)$ and in bits per dimension
    $$-\tfrac1D \log_2 P(k) \le -\frac{\mathbb E_u \log p(y)}{D \ln 2} + \log_2\frac{L}{2},$$
    the offset of 7 bits for $L = 256$ that score_sde adds. Suits models trained on
    uniformly dequantised data; a model trained on bin centres (VDM) has $p_0$ peaked at
    the centres and needs `ProcessDequantization`.
    """

    def __call__(
        self, process: AbstractProcess, key: PRNGKeyArray, x: Data, num_levels: int
    ) -> tuple[State, Float[Array, ""]]:
        levels = to_levels(x, num_levels).astype(x.dtype)
        y = -1.0 + 2.0 * (levels + jax.random.uniform(key, x.shape, x.dtype)) / num_levels
        return y, jnp.asarray(x.size * math.log(2.0 / num_levels), x.dtype)


class ProcessDequantization(AbstractDequantization):
    r"""$y = z_0 \sim q(z_0 \mid x)$, the forward process at $t = 0$, and its decoder.

    $\log P(x) \ge \mathbb E_q[\log p(x \mid z_0) + \log p_0(z_0) - \log q(z_0 \mid x)]$
    (with $-\log q(v_0 \mid x)$ added for auxiliary variables): the same decoder and
    noise level as the variational bound, so the right choice for a model trained on
    bin centres with `nelbo`.
    """

    def __call__(
        self, process: AbstractProcess, key: PRNGKeyArray, x: Data, num_levels: int
    ) -> tuple[State, Float[Array, ""]]:
        key_state, key_z0 = jax.random.split(key)
        u0, log_q = process.initial_state(key_state, x)
        z0, eps = process.sample_marginal(key_z0, u0, 0.0)
        log_weight = -process.decoder_nll(z0, x, num_levels) - process.marginal_log_prob(0.0, eps)
        return z0, log_weight - log_q


class TruncatedNormalDequantization(AbstractDequantization):
    r"""$y = x + s\,u$, $u \sim \mathcal N(0, I)$ truncated to $[-b, b]^D$,
    $s = e^{\gamma / 2}$: the i-DODE dequantisation (Zheng et al. 2023) the MuLAN
    reference evaluates with ($\gamma = -13.3$, $b = 3$).

    $s = e^{\gamma_{\min}/2}$ is $\sigma_0/\alpha_0$ of a VP process starting at
    $\gamma_{\min}$, the noise level a model trained on bin centres has learned at
    $t = 0$. The support $x \pm b s$ must lie inside the bin of $x$ (half-width $1/L$):
    $3 e^{-6.65} = 3.88 \cdot 10^{-3} < 1/256$. Then
    $P(x) \ge \int_{\text{bin}} p_0 = \mathbb E_q[p_0(y)/q(y \mid x)]$ with
    $$\log q(y \mid x) = \sum_i \log\varphi(u_i) - D \log Z - D \log s, \qquad
    Z = \operatorname{erf}(b/\sqrt2),$$
    so the weight is $w = -\log q(y \mid x)$, evaluated at the draw. (With one sample the
    reference uses its expectation $D(H[\text{TN}] + \log \sigma_0)$ instead, with
    $\sigma_0 \approx s$; it takes $Z = 0.9974613$, where $\operatorname{erf}(3/\sqrt2)
    = 0.9973002$.)

    **Arguments:** `gamma` (the log-SNR that sets $s$) and `bound` $b$.
    """

    gamma: float = -13.3
    bound: float = 3.0

    def __call__(
        self, process: AbstractProcess, key: PRNGKeyArray, x: Data, num_levels: int
    ) -> tuple[State, Float[Array, ""]]:
        scale = math.exp(0.5 * self.gamma)
        if self.bound * scale > 1.0 / num_levels:
            raise ValueError(
                f"The truncated normal reaches {self.bound * scale:.3g} from the bin centre, "
                f"beyond the half-width 1/{num_levels} of a bin; lower gamma or bound."
            )
        u = jax.random.truncated_normal(key, -self.bound, self.bound, x.shape, x.dtype)
        log_norm = math.log(math.erf(self.bound / math.sqrt(2.0)))
        log_q = -0.5 * jnp.sum(u**2) - x.size * (
            0.5 * math.log(2 * math.pi) + log_norm + math.log(scale)
        )
        return x + scale * u, -log_q


_DEQUANTIZATIONS: dict[str, AbstractDequantization] = {
    "uniform": UniformDequantization(),
    "process": ProcessDequantization(),
    "truncated_normal": TruncatedNormalDequantization(),
}


def _as_dequantization(dequantization: str | AbstractDequantization) -> AbstractDequantization:
    if isinstance(dequantization, AbstractDequantization):
        return dequantization
    if dequantization not in _DEQUANTIZATIONS:
        raise ValueError(
            f"Unknown dequantization {dequantization!r}; use one of "
            f"{sorted(_DEQUANTIZATIONS)} or an AbstractDequantization."
        )
    return _DEQUANTIZATIONS[dequantization]


def _combine(log_weights: Float[Array, " samples"], importance_weighted: bool) -> Float[Array, ""]:
    """`log mean exp` (importance-weighted) or the mean of per-sample log-weights."""
    if importance_weighted:
        return jax.nn.logsumexp(log_weights) - math.log(log_weights.shape[0])
    return jnp.mean(log_weights)


def ode_bits_per_dim(
    process: AbstractProcess,
    score_fn: Callable[[State, Time], State],
    x: Data,
    *,
    key: PRNGKeyArray,
    num_levels: int = 256,
    dequantization: str | AbstractDequantization = "uniform",
    num_samples: int = 1,
    importance_weighted: bool = False,
    **ode_kwargs,
) -> Float[Array, ""]:
    r"""An upper bound on $-\log_2 P(x) / D$ for discrete `x` from the probability-flow ODE.

    $\log P(x) \ge \mathbb E_{q(y \mid x)}[\log p_0(y) + w(y)]$ for a dequantisation
    $q$ (see `UniformDequantization`, `ProcessDequantization`), with $\log p_0(y)$ from
    `ode_log_likelihood`, averaged over `num_samples` draws; the importance-weighted
    version $\log \tfrac1N \sum_n e^{\log p_0(y_n) + w(y_n)}$ is tighter (Burda et al. 2016).

    **Arguments:** as `ode_log_likelihood` (whose keyword arguments pass through), plus
    `x` on the grid of `num_levels` bin centres, `dequantization` (`"uniform"`,
    `"process"` or an object), `num_samples` and `importance_weighted`.

    **Returns:** the bound, in bits per dimension.
    """
    x = check_discrete(x, num_levels)
    dequantization = _as_dequantization(dequantization)

    def bound(k):
        key_q, key_ode = jax.random.split(k)
        y, log_weight = dequantization(process, key_q, x, num_levels)
        result = ode_log_likelihood(process, score_fn, y, key=key_ode, **ode_kwargs)
        return result.log_prob + log_weight

    bounds = jax.vmap(bound)(jax.random.split(key, num_samples))
    return -_combine(bounds, importance_weighted) / (x.size * math.log(2.0))


def dense_vlb(
    process: AbstractProcess,
    model: Callable[[State, Time], State],
    x: Data,
    *,
    key: PRNGKeyArray,
    num_steps: int = 1000,
    num_levels: int = 256,
    parameterization: str | AbstractParameterization = "eps",
    chunk_size: int = 128,
) -> NELBO:
    r"""The $T$-step variational bound with every step evaluated (VDM's dense evaluation).

    $\mathcal L_T = \sum_{i=1}^T \mathrm{KL}(q(z_{s_i} \mid z_{t_i}, x) \Vert
    p(z_{s_i} \mid z_{t_i}))$ with $t_i = i/T$, $s_i = t_{i-1}$, one noise draw per step,
    plus the reconstruction and prior terms: an unbiased estimate of the $T$-step bound
    with far lower variance than `nelbo(..., num_steps=T)`.

    **Arguments:** as `nelbo`; `num_steps` is $T$; the model is evaluated `chunk_size`
    steps at a time to bound memory.

    **Returns:** `NELBO(total, diffusion, prior, reconstruction)` in bits/dim.
    """
    x = check_discrete(x, num_levels)
    parameterization = as_parameterization(parameterization)
    key_ends, key_steps = jax.random.split(key)
    u0, log_q, reconstruction, prior = endpoint_terms(process, x, key_ends, num_levels)

    def step(args):
        i, k = args
        t = i / num_steps
        s = (i - 1) / num_steps
        u_t, eps = process.sample_marginal(k, u0, t)
        eps_hat = parameterization.to_eps(process, model(u_t, t), u_t, t)
        return process.diffusion_loss_discrete(s, t, eps, eps_hat)

    steps = jnp.arange(1, num_steps + 1, dtype=x.dtype)
    keys = jax.random.split(key_steps, num_steps)
    diffusion = jnp.sum(jax.lax.map(step, (steps, keys), batch_size=chunk_size))
    return assemble_nelbo(x, reconstruction, prior, diffusion, log_q)


def mulan_ode_bits_per_dim(
    mulan: MuLAN,
    net: Callable[..., State],
    x: Data,
    *,
    key: PRNGKeyArray,
    num_levels: int = 256,
    parameterization: str | AbstractParameterization = "eps",
    dequantization: str | AbstractDequantization = TruncatedNormalDequantization(),
    num_samples: int = 20,
    importance_weighted: bool = True,
    **ode_kwargs,
) -> Float[Array, ""]:
    r"""An upper bound on $-\log_2 P(x)/D$ for MuLAN from the probability-flow ODE.

    $N$ = `num_samples` joint draws $z_n \sim q(z \mid x)$, $y_n \sim q(y \mid x)$ (the
    dequantisation) give the weights
    $$\log w_n = \log p_0(y_n \mid z_n) + \omega(y_n) - r(z_n),$$
    with $\log p_0(y \mid z)$ from `ode_log_likelihood` on `mulan.condition(z)`,
    $\omega$ the dequantisation's log-weight and $r(z)$ the latent family's `log_ratio`
    ($\log q(z \mid x) - \log p(z)$, or an upper bound on it). Since
    $P(x) = \mathbb E[\,\prod p/q\,] \ge \mathbb E[w_n]$, both
    $\log \tfrac1N \sum_n w_n$ (importance-weighted, Burda et al. 2016; the reference's
    20-sample evaluation) and $\tfrac1N \sum_n \log w_n$ are, in expectation, lower
    bounds on $\log P(x)$; the first is the tighter. The Hutchinson probe is drawn once
    per solve (the reference redraws it at every evaluation of its adaptive scipy solve,
    which makes the vector field random; an adaptive solver needs it fixed).

    **Arguments:**

    - `mulan`, `net`: the model and its network (see `MuLAN.denoiser`).
    - `x`: one example on the grid of `num_levels` bin centres.
    - `key`: PRNG key for the latents, the dequantisation and the probes.
    - `parameterization`: what `net` predicts (`EpsilonAsVelocity()` for the reference's
      conversion of an $\varepsilon$-trained network).
    - `dequantization`: `TruncatedNormalDequantization()` (the reference's, default),
      `"uniform"`, `"process"`, or another `AbstractDequantization`.
    - `num_samples`: $N$; `importance_weighted`: `logsumexp` or mean of the $\log w_n$.
    - `ode_kwargs`: passed to `ode_log_likelihood` (`solver`, `rtol`, `atol`, `trace`...).

    **Returns:** the bound in bits per dimension.
    """
    x = check_discrete(x, num_levels)
    dequantization = _as_dequantization(dequantization)
    params = mulan.posterior_params(x)

    def log_weight(k):
        key_z, key_q, key_ode = jax.random.split(k, 3)
        z = mulan.latent.sample(key_z, params)
        process = mulan.condition(z)
        score = score_fn(process, mulan.denoiser(net, z), parameterization)
        y, omega = dequantization(process, key_q, x, num_levels)
        log_p = ode_log_likelihood(process, score, y, key=key_ode, **ode_kwargs).log_prob
        return log_p + omega - mulan.latent.log_ratio(z, params)

    log_weights = jax.vmap(log_weight)(jax.random.split(key, num_samples))
    return -_combine(log_weights, importance_weighted) / (x.size * math.log(2.0))


def mulan_dense_vlb(
    mulan: MuLAN,
    net: Callable[..., State],
    x: Data,
    *,
    key: PRNGKeyArray,
    num_times: int = 128,
    num_levels: int = 256,
    parameterization: str | AbstractParameterization = "eps",
    num_steps: int | None = None,
    times: AbstractTimeSampler = AntitheticTimes(),
) -> NELBO:
    r"""MuLAN's bound of one example averaged over `num_times` stratified times (the
    reference's "dense" evaluation: the continuous-time loss at 128 times per image).

    The mean of `mulan_batch_nelbo` on `num_times` copies of `x`: the times
    $t_i = (u + i/n) \bmod 1$ cover $[0, 1)$ evenly, and each copy draws its own latent
    and noise. An unbiased estimate of the continuous-time bound, with far less variance
    than one `mulan_nelbo`. With `num_steps` $= T$ = `num_times` and the default
    antithetic times, the copies land on the $T$ grid steps once each, so the mean is the
    $T$-step bound with every step evaluated (VDM's dense VLB), each step with its own
    latent draw.

    **Arguments:** as `mulan_nelbo`; `num_times` is the number of stratified times,
    `num_steps` selects the finite-$T$ bound, `times` samples the times.

    **Returns:** `NELBO` of the means, scalars in bits/dim.
    """

    def one(_, k, u):
        return mulan_nelbo(
            mulan,
            net,
            x,
            key=k,
            num_levels=num_levels,
            parameterization=parameterization,
            num_steps=num_steps,
            t=u,
            times=times,
        )

    # `mulan_batch_nelbo` on `num_times` copies of `x`, with the same keys and times; `x`
    # stays unbatched (the batch is placeholders), so the encoder runs once, not per copy.
    bound = batch_bound(one, jnp.zeros((num_times,), x.dtype), key=key, times=times)
    return jax.tree.map(jnp.mean, bound)
