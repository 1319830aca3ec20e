r"""Likelihoods: the probability-flow ODE (diffrax), dequantised bits/dim, the dense VLB.

The probability-flow ODE $\dot u = \tilde f(u, t) = f(u, t) - \tfrac12 G G^\top \nabla
\log p_t(u)$ moves $p_0$ to $p_1$, and along its solution
$\tfrac{d}{dt}\log p_t(u_t) = -\nabla\!\cdot\tilde f(u_t, t)$ (Chen et al. 2018; Song et al.
2021, appendix D.2). Hence
$$\log p_0(u_0) = \log p_1(u_1) + \int_0^1 \nabla\!\cdot\tilde f(u_t, t)\,dt,$$
with $p_1$ replaced by the process's prior: the result is the exact log-density at $t = 0$
of the model defined by the prior and the ODE (for the exact score, the process's own
marginal $p_0$, up to the prior's mismatch with $p_1$). Only the diffused part of the
state is integrated and probed; constant parts (MuLAN's latent) condition the density.
"""

import abc
import functools
import math
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._custom_types import Data, Noise, Scalar, State, Time
from ._discrete import check_discrete_eagerly, to_levels
from ._losses import NELBO, assemble_nelbo, auxiliary_key, endpoint_terms, unit_to_time
from ._parameterizations import AbstractParameterization, as_parameterization, as_score
from ._processes import (
    AbstractLinearGaussianProcess,
    AbstractProcess,
    AbstractSDEProcess,
    require_capability,
)


class AbstractProbe(eqx.Module):
    r"""A distribution of Hutchinson probes $v$ with $\mathbb E[v v^\top] = I$."""

    @abc.abstractmethod
    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...], dtype) -> Array:
        """Probes of the given shape (leading axis: the probes)."""


class RademacherProbe(AbstractProbe):
    r"""$v_i = \pm 1$ with equal probability: the lowest-variance choice."""

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...], dtype) -> Array:
        return jax.random.rademacher(key, shape, dtype=dtype)


class GaussianProbe(AbstractProbe):
    r"""$v \sim \mathcal N(0, I)$."""

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...], dtype) -> Array:
        return jax.random.normal(key, shape, dtype=dtype)


class AbstractJacobianProducts(eqx.Module):
    r"""How the quadratic forms $v^\top J v$, $J = \partial f / \partial u$, are computed."""

    @abc.abstractmethod
    def __call__(
        self, f: Callable[[Noise], Noise], u: Noise, probes: Float[Array, " probes *noise"]
    ) -> tuple[Noise, Float[Array, " probes"]]:
        """`(f(u), [v^T J v for v in probes])`."""


class ForwardMode(AbstractJacobianProducts):
    """Jacobian-vector products, linearised once alongside the drift."""

    def __call__(
        self, f: Callable[[Noise], Noise], u: Noise, probes: Float[Array, " probes *noise"]
    ) -> tuple[Noise, Float[Array, " probes"]]:
        value, jvp = jax.linearize(f, u)
        return value, jax.vmap(lambda v: jnp.vdot(v, jvp(v)))(probes)


class ReverseMode(AbstractJacobianProducts):
    """Vector-Jacobian products, as score_sde's `likelihood.py`."""

    def __call__(
        self, f: Callable[[Noise], Noise], u: Noise, probes: Float[Array, " probes *noise"]
    ) -> tuple[Noise, Float[Array, " probes"]]:
        value, vjp = jax.vjp(f, u)
        return value, jax.vmap(lambda v: jnp.vdot(vjp(v)[0], v))(probes)


class AbstractTraceEstimator(eqx.Module):
    r"""Computes $f(u)$ and (an estimate of) $\operatorname{tr} \partial f / \partial u$."""

    @property
    def is_exact(self) -> bool:
        """Whether the divergence is exact (not a random estimate): what importance
        weighting over draws needs (see `ode_bits_per_dim`)."""
        return False

    @abc.abstractmethod
    def init(self, key: PRNGKeyArray, u: Noise) -> Float[Array, " probes *noise"]:
        """Draw what the estimator keeps fixed for a whole solve (the probes)."""

    @abc.abstractmethod
    def __call__(
        self, f: Callable[[Noise], Noise], u: Noise, probes: Float[Array, " probes *noise"]
    ) -> tuple[Noise, Float[Array, ""]]:
        """`(f(u), divergence)`."""


class ExactTrace(AbstractTraceEstimator):
    r"""The exact divergence $\sum_i e_i^\top J e_i$ from $D$ forward-mode products.

    Costs $D$ Jacobian-vector products per evaluation: for small dimension only.
    """

    @property
    def is_exact(self) -> bool:
        return True

    def init(self, key: PRNGKeyArray, u: Noise) -> Float[Array, " probes *noise"]:
        del key
        return jnp.eye(u.size, dtype=u.dtype).reshape(u.size, *u.shape)

    def __call__(
        self, f: Callable[[Noise], Noise], u: Noise, probes: Float[Array, " probes *noise"]
    ) -> tuple[Noise, Float[Array, ""]]:
        value, quad = ForwardMode()(f, u, probes)
        return value, jnp.sum(quad)


class HutchinsonTrace(AbstractTraceEstimator):
    r"""Hutchinson's unbiased estimate $\tfrac1K \sum_k v_k^\top J v_k$, $\mathbb E[v v^\top] = I$.

    **Arguments:**

    - `num_probes`: $K$, the number of probes, drawn once per solve (an adaptive solver
      needs a fixed vector field).
    - `probe`: their distribution, `RademacherProbe()` (the default) or `GaussianProbe()`.
    - `products`: `ForwardMode()` (one linearisation alongside the drift, the default) or
      `ReverseMode()`.
    """

    num_probes: int = 1
    probe: AbstractProbe = RademacherProbe()
    products: AbstractJacobianProducts = ForwardMode()

    def __check_init__(self):
        if self.num_probes < 1:
            raise ValueError(f"num_probes must be at least 1, got {self.num_probes}.")

    def init(self, key: PRNGKeyArray, u: Noise) -> Float[Array, " probes *noise"]:
        return self.probe.sample(key, (self.num_probes, *u.shape), u.dtype)

    def __call__(
        self, f: Callable[[Noise], Noise], u: Noise, probes: Float[Array, " probes *noise"]
    ) -> tuple[Noise, Float[Array, ""]]:
        value, quad = self.products(f, u, probes)
        return value, jnp.mean(quad)


class HutchPlusPlusTrace(AbstractTraceEstimator):
    r"""Hutch++ (Meyer et al. 2021): the trace of a low-rank sketch exactly, Hutchinson on
    the rest, from $3k$ Jacobian-vector products.

    With $k$ sketch probes $S$ and $k$ residual probes $G$ (Rademacher, drawn once per
    solve), $Q$ an orthonormal basis of $J S$ and $P = Q Q^\top$,
    $$\widehat{\operatorname{tr}} J = \operatorname{tr}(Q^\top J Q)
    + \tfrac1k \textstyle\sum_j g_j^\top (I - P) J (I - P) g_j,$$
    unbiased for every $S$ (since $\operatorname{tr}(P J (I - P)) = 0$), and of lower
    variance than $3k$ Hutchinson probes when a few directions carry most of $J$. The
    estimate depends on $Q$ only through $P$, so it is smooth along the solve wherever
    $J S$ has full rank. On the digits MLP its variance times cost is 2-3 times
    Hutchinson's (`benchmarks/likelihood_speed.py`): the flow's Jacobian there has no
    dominant directions. It pays where a few directions carry most of $J$.

    **Arguments:** `num_sketch`, $k$ (the products per evaluation are $3k$).
    """

    num_sketch: int = 1

    def __check_init__(self):
        if self.num_sketch < 1:
            raise ValueError(f"num_sketch must be at least 1, got {self.num_sketch}.")

    def init(self, key: PRNGKeyArray, u: Noise) -> Float[Array, " probes *noise"]:
        return jax.random.rademacher(key, (2 * self.num_sketch, *u.shape), dtype=u.dtype)

    def __call__(
        self, f: Callable[[Noise], Noise], u: Noise, probes: Float[Array, " probes *noise"]
    ) -> tuple[Noise, Float[Array, ""]]:
        value, jvp = jax.linearize(f, u)
        k = self.num_sketch
        flat = probes.reshape(2 * k, -1)
        sketch, residual = flat[:k], flat[k:]

        def products(vectors):
            return jax.vmap(lambda v: jvp(v.reshape(u.shape)).reshape(-1))(vectors)

        basis = jnp.linalg.qr(products(sketch).T)[0].T  # (k, D), orthonormal rows
        projected = residual - (residual @ basis.T) @ basis
        low_rank = jnp.sum(basis * products(basis))
        rest = jnp.sum(projected * products(projected)) / k
        return value, low_rank + rest


def as_trace_estimator(
    trace: str | AbstractTraceEstimator, num_probes: int
) -> AbstractTraceEstimator:
    """The contract's shorthands `"hutchinson"` (with `num_probes`) and `"exact"`, or an
    estimator passed through."""
    if isinstance(trace, AbstractTraceEstimator):
        return trace
    if trace == "exact":
        return ExactTrace()
    if trace == "hutchinson":
        return HutchinsonTrace(num_probes=num_probes)
    raise ValueError(
        f"Unknown trace {trace!r}; use 'hutchinson', 'exact' or an AbstractTraceEstimator."
    )


@functools.lru_cache(maxsize=64)
def _evaluation_counts(
    solver: diffrax.AbstractSolver,
    controller: diffrax.AbstractStepSizeController,
    dt0: float | None,
) -> tuple[int, int]:
    r"""`(at_start, per_step)`: the vector-field evaluations of a solve with this solver
    and controller are `at_start + per_step * num_steps` (every attempted step counted).

    Measured, not derived: two solves of $\dot y = -y + \sin 3t$ over spans of 3 and 9
    first steps (1 and 3 for an adaptive first step), run outside any trace, count their
    evaluations with a host callback, which also covers solvers without a Runge-Kutta
    tableau. Valid for every solver whose evaluations per step do not depend on the
    problem (every explicit one), and cached per solver and controller.
    """
    calls = []

    def vf(t, y, args):
        jax.debug.callback(lambda _: calls.append(1), y)
        return -y + jnp.sin(3.0 * t)

    unit = 1.0 / 3.0 if dt0 is None else dt0
    counts = []
    with jax.ensure_compile_time_eval():
        for t1 in (3.0 * unit, 9.0 * unit):
            calls.clear()
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(vf),
                solver,
                0.0,
                t1,
                dt0,
                jnp.ones(()),
                stepsize_controller=controller,
                saveat=diffrax.SaveAt(t1=True),
            )
            jax.effects_barrier()
            counts.append((len(calls), int(sol.stats["num_steps"])))
    (short, short_steps), (long, long_steps) = counts
    per_step = (long - short) // (long_steps - short_steps)
    return short - per_step * short_steps, per_step


class ODESolve(eqx.Module):
    r"""How an ODE is solved: the diffrax solver, step-size controller, adjoint, first step
    and step limit, in one object shared by the likelihood and the ODE sampler.

    **Arguments:**

    - `solver`: a diffrax ODE solver (default `Tsit5`).
    - `stepsize_controller`: default an adaptive `PIDController(rtol=1e-5, atol=1e-5)`;
      `diffrax.ConstantStepSize()` with `dt0` for fixed steps.
    - `adjoint`: how to differentiate through the solve.
    - `dt0`: the size of the first step (its sign follows the direction of integration);
      `None` lets an adaptive controller choose it.
    - `max_steps`: the step limit; a solve that reaches it is reported, not raised.
    """

    solver: diffrax.AbstractSolver = diffrax.Tsit5()
    stepsize_controller: diffrax.AbstractStepSizeController = diffrax.PIDController(
        rtol=1e-5, atol=1e-5
    )
    adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint()
    dt0: float | None = None
    max_steps: int = 16_384

    def __call__(
        self, vector_field: Callable, y0, t0: float | Scalar, t1: float | Scalar, args
    ) -> diffrax.Solution:
        """Solve from `t0` to `t1` (either direction), saving the end point only. Failures
        (`max_steps` reached, a step size underflow) are in the solution's `result`, not
        raised: no host callback inside the solve."""
        return self._solve(vector_field, y0, t0, t1, args, diffrax.SaveAt(t1=True))

    def step_ends(
        self, vector_field: Callable, y0, t0: float | Scalar, t1: float | Scalar, args
    ) -> Float[Array, " max_steps"]:
        """The end times of the accepted steps of the same solve, in order, padded with
        `inf` to `max_steps`: where the controller put its steps. No state is saved."""
        saveat = diffrax.SaveAt(steps=True, fn=lambda t, y, args: jnp.zeros((), jnp.float32))
        ts = self._solve(vector_field, y0, t0, t1, args, saveat).ts
        assert ts is not None
        return ts

    def _solve(self, vector_field, y0, t0, t1, args, saveat: diffrax.SaveAt) -> diffrax.Solution:
        dt0 = None if self.dt0 is None else math.copysign(self.dt0, t1 - t0)
        return diffrax.diffeqsolve(
            diffrax.ODETerm(vector_field),
            self.solver,
            t0,
            t1,
            dt0,
            y0,
            args=args,
            stepsize_controller=self.stepsize_controller,
            adjoint=self.adjoint,
            saveat=saveat,
            max_steps=self.max_steps,
            throw=False,
        )

    def evaluations(self, num_steps: Int[Array, ""]) -> Int[Array, ""]:
        """The vector-field evaluations of a solve of `num_steps` attempted steps; `-1`
        for an implicit solver, whose evaluations per step depend on its Newton
        iterations."""
        if isinstance(self.solver, diffrax.AbstractImplicitSolver):
            return jnp.full_like(num_steps, -1)
        controller, dt0 = self.stepsize_controller, self.dt0
        # Evaluations per step depend on neither the tolerances nor the grid, which may be
        # arrays (unhashable, or traced): count with a fixed controller of the same kind.
        if isinstance(controller, diffrax.AbstractAdaptiveStepSizeController):
            controller = diffrax.PIDController(rtol=1e-3, atol=1e-3)
        elif isinstance(controller, diffrax.StepTo):
            controller, dt0 = diffrax.ConstantStepSize(), 1.0
        at_start, per_step = _evaluation_counts(self.solver, controller, dt0)
        return at_start + per_step * num_steps


class LikelihoodResult(eqx.Module):
    """The result of `ode_log_likelihood`.

    **Fields:**

    - `log_prob`: $\\log p_{t_0}(u_0)$ in nats; NaN where the solve failed.
    - `nfe`: evaluations of the ODE's vector field (see `ODESolve.evaluations`).
    - `num_steps`, `num_accepted_steps`, `num_rejected_steps`: diffrax's statistics.
    - `result`: diffrax's result code (`diffrax.RESULTS.successful`, or why it stopped);
      `succeeded` says whether it is the former.
    """

    log_prob: Float[Array, ""]
    nfe: Int[Array, ""]
    num_steps: Int[Array, ""]
    num_accepted_steps: Int[Array, ""]
    num_rejected_steps: Int[Array, ""]
    result: diffrax.RESULTS

    @property
    def succeeded(self) -> Array:
        """Whether the solve ended at `t1`."""
        return self.result == diffrax.RESULTS.successful


class ODELikelihood(eqx.Module):
    r"""The probability-flow log-likelihood with its settings: the solve and the trace
    estimator. `ode_log_likelihood` builds one from its keyword arguments;
    `ode_bits_per_dim` takes one.

    **Arguments:** `solve` (an `ODESolve`) and `trace` (an `AbstractTraceEstimator`,
    default one Rademacher probe).
    """

    solve: ODESolve = ODESolve()
    trace: AbstractTraceEstimator = HutchinsonTrace()

    def __call__(
        self,
        process: AbstractSDEProcess,
        score_fn: Callable[[State, Time], Noise],
        u0: State,
        *,
        key: PRNGKeyArray,
        t0: float | Scalar = 0.0,
        t1: float | Scalar = 1.0,
    ) -> LikelihoodResult:
        """$\\log p_{t_0}(u_0)$; arguments as `ode_log_likelihood`."""
        with jax.default_matmul_precision("float32"):
            vector_field, y0, args, constant = self._problem(process, score_fn, u0, key)
            sol = self.solve(vector_field, y0, t0, t1, args)
            assert sol.ys is not None
            u1 = process.combine(sol.ys[0][-1], constant)
            log_prob = process.prior_log_prob(u1) + sol.ys[1][-1]
        stats = sol.stats
        return LikelihoodResult(
            jnp.where(sol.result == diffrax.RESULTS.successful, log_prob, jnp.nan),
            self.solve.evaluations(stats["num_steps"]),
            stats["num_steps"],
            stats["num_accepted_steps"],
            stats["num_rejected_steps"],
            sol.result,
        )

    def step_ends(
        self,
        process: AbstractSDEProcess,
        score_fn: Callable[[State, Time], Noise],
        u0: State,
        *,
        key: PRNGKeyArray,
        t0: float | Scalar = 0.0,
        t1: float | Scalar = 1.0,
    ) -> Float[Array, " max_steps"]:
        """The end times of the accepted steps of the solve `__call__` makes, padded with
        `inf` (`ODESolve.step_ends`); `tuned_grid` turns those of several examples into a
        fixed grid."""
        with jax.default_matmul_precision("float32"):
            vector_field, y0, args, _ = self._problem(process, score_fn, u0, key)
            return self.solve.step_ends(vector_field, y0, t0, t1, args)

    def _problem(self, process, score_fn, u0, key):
        """The augmented ODE of `u0`: its vector field, initial state, arguments, and the
        part of the state that the process does not diffuse."""
        require_capability(process, AbstractSDEProcess, "ode_log_likelihood")
        score = as_score(score_fn)
        estimator = self.trace
        diffused, constant = process.partition(u0)
        probes = estimator.init(key, diffused)

        def vector_field(t, y, args):
            score, probes, constant = args

            def flow(d):
                return score.probability_flow(process, process.combine(d, constant), t)

            return estimator(flow, y[0], probes)

        y0 = (diffused, jnp.zeros((), diffused.dtype))
        return vector_field, y0, (score, probes, constant), constant


def tuned_grid(
    step_ends: Float[Array, "examples max_steps"],
    t0: float | Scalar,
    t1: float | Scalar,
    num_steps: int | None = None,
    resolution: int = 4096,
) -> Float[Array, " num_steps_plus_one"]:
    r"""A fixed time grid whose density of steps is the mean of adaptive solves'.

    Each row of `step_ends` (`ODELikelihood.step_ends` of one example, `inf`-padded) gives
    the step count $S_i(t)$, the number of accepted steps that end by $t$, interpolated
    linearly between the step ends. The grid's points are where the mean $\bar S(t)$ over
    the examples passes $k\, \bar S(t_1) / N$, $k = 0 .. N$: step sizes follow where the
    controller needed small steps on average. A fixed grid then solves every example in
    $N$ steps, with no rejected steps, no error estimate and, under `vmap`, no wait for
    the slowest example; its accuracy is checked as any solve's is, with
    `solver_error` against a tight adaptive solve (on the digits benchmark, Tsit5 on the
    grid tuned at 1e-5 had the adaptive solve's error, 1.5 nats against 1.4, in 58% of
    its time: `docs/benchmarks.md`).

    **Arguments:**

    - `step_ends`: the accepted steps' end times of each example, from `t0` towards `t1`.
    - `t0`, `t1`: the span.
    - `num_steps`: $N$; default the mean number of accepted steps, rounded (then the
      function needs concrete values: call it outside `jit`).
    - `resolution`: the points on which $\bar S$ is tabulated.

    **Returns:** $N + 1$ times from exactly `t0` to exactly `t1`, for
    `ODESolve(stepsize_controller=diffrax.StepTo(ts=grid))`.
    """
    fine = jnp.linspace(t0, t1, resolution)
    # jnp.interp wants increasing abscissae: a backward solve's times are negated.
    sign = jnp.where(jnp.asarray(t1) > jnp.asarray(t0), 1.0, -1.0)
    start = jnp.asarray(t0, step_ends.dtype)[None]

    def count(ends):
        finite = jnp.isfinite(ends)
        steps = jnp.concatenate([start, jnp.where(finite, ends, t1)])
        index = jnp.concatenate([jnp.zeros(1), jnp.cumsum(finite)])
        return jnp.interp(sign * fine, sign * steps, index)

    mean_count = jnp.mean(jax.vmap(count)(step_ends), axis=0)
    if num_steps is None:
        num_steps = max(1, round(float(mean_count[-1])))
    targets = jnp.linspace(0.0, mean_count[-1], num_steps + 1)
    grid = jnp.interp(targets, mean_count, fine)
    return grid.at[0].set(t0).at[-1].set(t1)


def ode_log_likelihood(
    process: AbstractSDEProcess,
    score_fn: Callable[[State, Time], Noise],
    u0: State,
    *,
    key: PRNGKeyArray,
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    rtol: float | Scalar = 1e-5,
    atol: float | Scalar = 1e-5,
    trace: str | AbstractTraceEstimator = "hutchinson",
    num_probes: int = 1,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint(),
    dt0: float | None = None,
    max_steps: int = 16_384,
    t0: float | Scalar = 0.0,
    t1: float | Scalar = 1.0,
) -> LikelihoodResult:
    r"""$\log p_{t_0}(u_0)$ in nats by solving the probability-flow ODE from $t_0$ to $t_1$.

    One example per call; `jax.jit` and `jax.vmap` it (each example keeps its own
    adaptive steps). The solve runs at full float32 matrix-multiply precision whatever
    the global default, since TF32/bf16 products ruin likelihoods. For a state with
    constant parts (MuLAN's latent), the density is that of the diffused part given them.

    **Arguments:**

    - `process`: the forward process; its prior gives $\log p_1$.
    - `score_fn`: `score_fn(u, t)` $\approx \nabla_u \log p_t(u)$: a network wrapped by
      `score_fn(process, model, ...)` (whose probability flow takes the process's cheapest
      route), or any callable, such as an analytic score.
    - `u0`: one state of the process (`process.initial_state(key, x).state`).
    - `key`: PRNG key for the Hutchinson probes, fixed for the whole solve.
    - `solver`: a diffrax ODE solver.
    - `rtol`, `atol`: tolerances of the default `diffrax.PIDController` (floats or
      arrays: one compiled solve serves every tolerance).
    - `trace`: `"hutchinson"` (default), `"exact"` (small dimension), or an
      `AbstractTraceEstimator` such as `HutchinsonTrace(products=ReverseMode())`.
    - `num_probes`: the number of Hutchinson probes of `"hutchinson"`.
    - `stepsize_controller`: replaces the default PID controller (with `dt0` for a
      `diffrax.ConstantStepSize`).
    - `adjoint`, `dt0`, `max_steps`: see `ODESolve`.
    - `t0`, `t1`: integration range.

    **Returns:** `LikelihoodResult(log_prob, nfe, ...)` with diffrax's statistics.
    """
    if stepsize_controller is None:
        stepsize_controller = diffrax.PIDController(rtol=rtol, atol=atol)
    likelihood = ODELikelihood(
        ODESolve(solver, stepsize_controller, adjoint, dt0, max_steps),
        as_trace_estimator(trace, num_probes),
    )
    return likelihood(process, score_fn, u0, key=key, t0=t0, t1=t1)


class AbstractDequantization(eqx.Module):
    r"""A distribution $q(u \mid x)$ over states for discrete $x$, with a weight.

    A draw returns a state $u$ (its data part continuous, its auxiliary parts from the
    process's $q(\mathrm{aux} \mid x)$) and $w(u)$ such that
    $\log P(x) \ge \mathbb E_{q(u \mid x)}[\log p_0(u) + w(u)]$ for any model density
    $p_0$, the density the probability-flow ODE computes. Every dequantisation builds
    the state through the process, so the auxiliary cost enters the weight whatever the
    family: averaging $e^{\log p_0 + w}$ over draws is the importance-weighted bound.
    """

    @abc.abstractmethod
    def __call__(
        self,
        process: AbstractLinearGaussianProcess,
        key: PRNGKeyArray,
        x: Data,
        num_levels: int,
    ) -> tuple[State, Float[Array, ""]]:
        """`(u, log_weight)` for one draw."""


def _with_auxiliary(
    process: AbstractProcess, key: PRNGKeyArray, x: Data, y: Data, log_weight: Float[Array, ""]
) -> tuple[State, Float[Array, ""]]:
    """The state for data `x` with its data part replaced by the dequantised `y`, and the
    weight less the auxiliary draw's cost."""
    draw = process.initial_state(key, x)
    return process.with_data(draw.state, y), log_weight - draw.log_ratio


class UniformDequantization(AbstractDequantization):
    r"""$y = -1 + 2(k + v)/L$, $v \sim U[0, 1)^D$: uniform noise over each bin.

    With bins of width $2/L$, $P(k) = \int_{\text{bin}(k)} p(y)\,dy =
    (2/L)^D\,\mathbb E_v[p(y)]$, so $w = D \log(2/L)$ and in bits per dimension
    $$-\tfrac1D \log_2 P(k) \le -\frac{\mathbb E_v \log p(y)}{D \ln 2} + \log_2\frac{L}{2},$$
    the offset of 7 bits for $L = 256$ that score_sde adds. Suits models trained on
    uniformly dequantised data; a model trained on bin centres (VDM) has $p_0$ peaked at
    the centres and needs `ProcessDequantization`.
    """

    def __call__(
        self, process: AbstractProcess, key: PRNGKeyArray, x: Data, num_levels: int
    ) -> tuple[State, Float[Array, ""]]:
        key_aux, key_y = jax.random.split(key)
        levels = to_levels(x, num_levels).astype(x.dtype)
        y = -1.0 + 2.0 * (levels + jax.random.uniform(key_y, x.shape, x.dtype)) / num_levels
        weight = jnp.asarray(x.size * math.log(2.0 / num_levels), x.dtype)
        return _with_auxiliary(process, key_aux, x, y, weight)


class ProcessDequantization(AbstractDequantization):
    r"""$u = z \sim q(u_{t_{\min}} \mid u_0)$, the forward process at $t_{\min}$, and its
    decoder.

    $\log P(x) \ge \mathbb E_q[\log p(x \mid z) + \log p_0(z) - \log q(z \mid u_0)
    - \log q(\mathrm{aux} \mid x) + \log p(\mathrm{aux})]$: the same decoder, noise level
    and auxiliary draw as the variational bound, so the right choice for a model trained
    on bin centres with `nelbo`. Requires a linear-Gaussian process.
    """

    def __call__(
        self,
        process: AbstractLinearGaussianProcess,
        key: PRNGKeyArray,
        x: Data,
        num_levels: int,
    ) -> tuple[State, Float[Array, ""]]:
        key_aux, key_z = jax.random.split(key)
        draw = process.initial_state(key_aux, x)
        t_min = process.t_min
        z, eps = process.sample_marginal(key_z, draw.state, t_min)
        log_weight = -process.decoder_nll(z, draw.state, num_levels) - process.marginal_log_prob(
            draw.state, t_min, eps
        )
        return z, log_weight - draw.log_ratio


class TruncatedNormalDequantization(AbstractDequantization):
    r"""$y = x + s\,v$, $v \sim \mathcal N(0, I)$ truncated to $[-b, b]^D$,
    $s = e^{\gamma / 2}$: the i-DODE dequantisation (Zheng et al. 2023) the MuLAN
    reference evaluates with ($\gamma = -13.3$, $b = 3$).

    $s = e^{\gamma_{\min}/2}$ is $\sigma_0/\alpha_0$ of a VP process starting at
    $\gamma_{\min}$, the noise level a model trained on bin centres has learned at
    $t = 0$. The support $x \pm b s$ must lie inside the bin of $x$ (half-width $1/L$):
    $3 e^{-6.65} = 3.88 \cdot 10^{-3} < 1/256$. Then
    $P(x) \ge \int_{\text{bin}} p_0 = \mathbb E_q[p_0(y)/q(y \mid x)]$ with
    $$\log q(y \mid x) = \sum_i \log\varphi(v_i) - D \log Z - D \log s, \qquad
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
        key_aux, key_y = jax.random.split(key)
        v = jax.random.truncated_normal(key_y, -self.bound, self.bound, x.shape, x.dtype)
        log_norm = math.log(math.erf(self.bound / math.sqrt(2.0)))
        log_q = -0.5 * jnp.sum(v**2) - x.size * (
            0.5 * math.log(2 * math.pi) + log_norm + math.log(scale)
        )
        return _with_auxiliary(process, key_aux, x, x + scale * v, -log_q)


def ode_bits_per_dim(
    process: AbstractSDEProcess,
    score_fn: Callable[[State, Time], Noise],
    x: Data,
    *,
    key: PRNGKeyArray,
    num_levels: int = 256,
    dequantization: AbstractDequantization = UniformDequantization(),
    num_samples: int = 1,
    importance_weighted: bool = False,
    likelihood: ODELikelihood = ODELikelihood(),
) -> Float[Array, ""]:
    r"""An upper bound on $-\log_2 P(x) / D$ for discrete `x` from the probability-flow ODE.

    $N$ = `num_samples` draws $u_n \sim q(u \mid x)$ of the dequantisation (the data part
    dequantised, any auxiliary part drawn by the process) give the log-weights
    $\log w_n = \log p_0(u_n) + \omega(u_n)$, with $\log p_0$ from the probability-flow
    ODE (started at the process's $t_{\min}$) and $\omega$ the dequantisation's
    log-weight, which includes the auxiliary cost. Since $P(x) \ge \mathbb E[w_n]$, both
    $\log \tfrac1N \sum_n w_n$ (importance-weighted, Burda et al. 2016; MuLAN's
    reference uses 20 draws of its latent) and $\tfrac1N \sum_n \log w_n$ are, in
    expectation, lower bounds on $\log P(x)$; on the same draws the first is never the
    looser. That needs exact $\log p_0$: with a random trace estimate $\log \hat p_0 =
    \log p_0 + n$, $\mathbb E[n] = 0$, the mean of the $\log w_n$ stays a bound but
    $\mathbb E\, e^{n} > 1$ inflates every $w_n$, and the importance-weighted value falls
    below the bound (measured on digits with 4 draws and one Hutchinson probe: 0.24 bits/dim
    below the exact-trace value for VP, 0.69 for CLD). So importance weighting with
    $N > 1$ requires an exact trace estimator (`ExactTrace`), and raises `ValueError`
    otherwise.

    **Arguments:**

    - `process`, `score_fn`: as `ode_log_likelihood`.
    - `x`: one example on the grid of `num_levels` bin centres (checked when called
      eagerly, as `nelbo`).
    - `key`: PRNG key for the dequantisation, the auxiliary draws and the probes.
    - `num_levels`: the number of levels of the data.
    - `dequantization`: `UniformDequantization()` (default), `ProcessDequantization()`,
      `TruncatedNormalDequantization()` or another `AbstractDequantization`.
    - `num_samples`: $N$; `importance_weighted`: `logsumexp` or mean of the $\log w_n$.
    - `likelihood`: the solve and the trace estimator (`ODELikelihood`).

    **Returns:** the bound, in bits per dimension (NaN if a solve failed).
    """
    require_capability(process, AbstractSDEProcess, "ode_bits_per_dim")
    check_discrete_eagerly(x, num_levels)
    if importance_weighted and num_samples > 1 and not likelihood.trace.is_exact:
        raise ValueError(
            f"importance_weighted=True over {num_samples} draws needs exact log-densities, "
            f"but the trace estimator is {type(likelihood.trace).__name__}: the exponential "
            "of its noisy log-density is biased upward, so the weighted value is no bound. "
            "Pass likelihood=ODELikelihood(trace=ExactTrace()) (small dimension), or "
            "importance_weighted=False."
        )

    def log_weight(k):
        key_q, key_ode = jax.random.split(k)
        u, omega = dequantization(process, key_q, x, num_levels)
        result = likelihood(process, score_fn, u, key=key_ode, t0=process.t_min)
        return result.log_prob + omega

    log_weights = jax.vmap(log_weight)(jax.random.split(key, num_samples))
    if importance_weighted:
        combined = jax.nn.logsumexp(log_weights) - math.log(num_samples)
    else:
        combined = jnp.mean(log_weights)
    return -combined / (x.size * math.log(2.0))


def dense_vlb(
    process: AbstractLinearGaussianProcess,
    model: Callable[[State, Time], Noise],
    x: Data,
    *,
    key: PRNGKeyArray,
    num_steps: int = 1000,
    num_levels: int = 256,
    parameterization: str | AbstractParameterization = "eps",
    chunk_size: int = 128,
) -> NELBO:
    r"""The $T$-step variational bound with every step evaluated (VDM's dense evaluation).

    $\mathcal L_T = \sum_{i=1}^T \mathrm{KL}(q(u_{s_i} \mid u_{t_i}, u_0) \Vert
    p(u_{s_i} \mid u_{t_i}))$ on the grid $t_i = t_{\min} + (1 - t_{\min})\,i/T$,
    $s_i = t_{i-1}$, one noise draw per step and one draw $u_0 \sim q(u_0 \mid x)$ for all
    of them, plus the reconstruction, prior and auxiliary terms: an unbiased estimate of
    the $T$-step bound with far lower variance than `nelbo(..., num_steps=T)`.

    **Arguments:** as `nelbo`; `num_steps` is $T$; the model is evaluated `chunk_size`
    steps at a time to bound memory.

    **Returns:** `NELBO(total, diffusion, prior, reconstruction, auxiliary)` in bits/dim.
    """
    require_capability(process, AbstractLinearGaussianProcess, "dense_vlb")
    check_discrete_eagerly(x, num_levels)
    parameterization = as_parameterization(parameterization)
    key_ends, key_steps = jax.random.split(key)
    draw = process.initial_state(auxiliary_key(key), x)
    u0 = draw.state
    reconstruction, prior = endpoint_terms(process, u0, key_ends, num_levels)

    def step(args):
        i, k = args
        t = unit_to_time(process, i / num_steps)
        s = unit_to_time(process, (i - 1) / num_steps)
        u_t, eps = process.sample_marginal(k, u0, t)
        eps_hat = parameterization.to_eps(process, model(u_t, t), u_t, t)
        return process.diffusion_loss_discrete(u0, s, t, eps, eps_hat)

    steps = jnp.arange(1, num_steps + 1, dtype=x.dtype)
    keys = jax.random.split(key_steps, num_steps)
    diffusion = jnp.sum(jax.lax.map(step, (steps, keys), batch_size=chunk_size))
    return assemble_nelbo(x, reconstruction, prior, diffusion, draw.kl)
