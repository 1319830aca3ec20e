r"""What a run trains: a forward process and a denoiser, one class for every process.

The trainer, the evaluator, the sampler and the plots call only the methods of
`DiffusionModel`, each per example or per batch, pure, and `jit`-able. The model knows
no family: it calls the core functions on its process, adapts its array network to the
process's state with `process.denoiser`, and offers each evaluation the process has the
capability for (the variational bounds need a linear-Gaussian process, the ODE bound
an SDE process; the denoising loss, the samplers and the schedule curves any linear
process; asking for one the process lacks is an error that says so and why). What
training minimises, `objective`, is the negative ELBO where the process has one and the
denoising loss otherwise (DDPM with non-Gaussian noise), unless the config says.
"""

import math
from collections.abc import Callable
from typing import Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._custom_types import Noise, State, Time
from .._likelihood import (
    AbstractDequantization,
    ExactTrace,
    HutchinsonTrace,
    ODELikelihood,
    ODESolve,
    ProcessDequantization,
    dense_vlb,
    ode_bits_per_dim,
)
from .._losses import (
    NELBO,
    AbstractTimeSampler,
    AntitheticTimes,
    batch_bound,
    denoising_loss,
    nelbo,
)
from .._parameterizations import AbstractParameterization, as_parameterization, score_fn
from .._processes import (
    AbstractLinearGaussianProcess,
    AbstractLinearProcess,
    AbstractProcess,
    AbstractSDEProcess,
    require_capability,
)
from ..nn import MLPDenoiser, UNet, matched_fourier_exponents
from ._config import Config
from ._registry import DEQUANTIZATIONS, build_process, build_times


Sampler = Callable[..., State]
"""A core sampler, `sampler(process, score_fn, key, shape, **kwargs) -> u`."""


class _Dropout(eqx.Module):
    """A denoiser called with a dropout key: `net(*args, key=key)`."""

    net: Callable
    key: PRNGKeyArray

    def __call__(self, *args) -> Array:
        return self.net(*args, key=self.key)


class DiffusionModel(eqx.Module):
    r"""A trainable diffusion model: any forward process and an array denoiser.

    All methods act on host-free JAX values and can be `jit`-ted; the arrays of the
    module (network weights and any learned process parameters: schedules, covariances,
    MuLAN's encoder and schedule network) are what is trained.

    **Fields:**

    - `process`: the forward process.
    - `denoiser`: an array network `denoiser(h, t, cond=None, *, key=None)` (key for
      dropout) built for `process.network_shape(data_shape)`; `process.denoiser` adapts
      it to the process's state.
    - `parameterization`: what the network predicts.
    - `data_shape`, `num_levels`: one example's shape and number of levels.
    - `dequantization`, `ode_samples`: the ODE bound's dequantisation and its number of
      importance-weighted draws (see `EvalConfig`).
    - `times`: the time sampler of the bound and of the denoising loss (VDM's
      low-discrepancy times by default; DDPM's uniform steps for DDPM).
    - `objective`: what `loss` is, `"elbo"` (`nelbo`) or `"denoising"` (`denoising`).
    """

    process: AbstractProcess
    denoiser: Callable
    parameterization: AbstractParameterization
    data_shape: tuple[int, ...] = eqx.field(static=True)
    num_levels: int = eqx.field(static=True)
    dequantization: AbstractDequantization = eqx.field(default=ProcessDequantization(), static=True)
    ode_samples: int = eqx.field(default=1, static=True)
    times: AbstractTimeSampler = eqx.field(default=AntitheticTimes(), static=True)
    objective: Literal["elbo", "denoising"] = eqx.field(default="elbo", static=True)

    def __check_init__(self):
        if self.objective == "elbo":
            require_capability(self.process, AbstractLinearGaussianProcess, "objective=elbo")

    def model(self) -> Callable[[State, Time], Noise]:
        """The denoiser as the core's `model(u_t, t)` (dropout off)."""
        return self.process.denoiser(self.denoiser)

    def nelbo(
        self, xs: Float[Array, " batch *shape"], *, key: PRNGKeyArray, train: bool = False
    ) -> NELBO:
        """`ad.nelbo` of each example, bits/dim, fields shaped `(batch,)`, with the times
        of `times` (VDM's low-discrepancy times across the batch by default).

        **Arguments:** `xs`, a batch on the grid of bin centres (checked where the data
        enter, not here); `key`; `train`, whether dropout is on (a key per example).
        """
        process = require_capability(self.process, AbstractLinearGaussianProcess, "The bound")
        return self._per_example(nelbo, process, xs, key, train, num_levels=self.num_levels)

    def denoising(
        self, xs: Float[Array, " batch *shape"], *, key: PRNGKeyArray, train: bool = False
    ) -> Float[Array, " batch"]:
        """`ad.denoising_loss` of each example (the noise-prediction MSE per element,
        unitless), at times of `times` drawn across the batch; arguments as `nelbo`."""
        process = require_capability(self.process, AbstractLinearProcess, "The denoising loss")
        return self._per_example(denoising_loss, process, xs, key, train)

    def _per_example(
        self,
        objective: Callable,
        process: AbstractLinearProcess,
        xs: Float[Array, " batch *shape"],
        key: PRNGKeyArray,
        train: bool,
        **kwargs,
    ):
        """`objective(process, model, x, ...)` of each example through `batch_bound`: the
        first half of each example's key drives the objective, the second dropout."""

        def one(x, k, uniform):
            key_objective, key_dropout = jax.random.split(k)
            net = _Dropout(self.denoiser, key_dropout) if train else self.denoiser
            return objective(
                process,
                process.denoiser(net),
                x,
                key=key_objective,
                parameterization=self.parameterization,
                times=self.times,
                uniform=uniform,
                **kwargs,
            )

        return batch_bound(one, xs, key=key, times=self.times)

    def loss(
        self, xs: Float[Array, " batch *shape"], *, key: PRNGKeyArray, train: bool = False
    ) -> Float[Array, " batch"]:
        """The training objective of each example: `nelbo(...).total` (bits/dim) or
        `denoising(...)`, as `objective` says."""
        if self.objective == "elbo":
            return self.nelbo(xs, key=key, train=train).total
        return self.denoising(xs, key=key, train=train)

    def dense_vlb(
        self, x: Float[Array, " *shape"], *, key: PRNGKeyArray, num_steps: int
    ) -> Float[Array, ""]:
        """The `num_steps`-step variational bound of one example with every step evaluated,
        bits/dim (`ad.dense_vlb`)."""
        process = require_capability(self.process, AbstractLinearGaussianProcess, "The bound")
        return dense_vlb(
            process,
            self.model(),
            x,
            key=key,
            num_steps=num_steps,
            num_levels=self.num_levels,
            parameterization=self.parameterization,
        ).total

    def ode_bpd(
        self,
        x: Float[Array, " *shape"],
        *,
        key: PRNGKeyArray,
        tolerance: float | Float[Array, ""] = 1e-5,
        grid: Float[Array, " points"] | None = None,
    ) -> Float[Array, ""]:
        """The probability-flow ODE bound on $-\\log_2 P(x) / D$ of one example:
        `ode_samples` draws of the dequantisation (and of any auxiliary state), Tsit5 at
        `rtol = atol = tolerance` (an array is fine: one compiled solve serves every
        tolerance) or, given a `grid` (`ad.tuned_grid` of `ode_step_ends`), fixed steps
        between its times. One
        draw takes one Hutchinson probe per solve; several are importance-weighted, which
        needs the exact trace (`ad.ode_bits_per_dim` says why), at the cost of one
        Jacobian-vector product per dimension of the state."""
        process = require_capability(self.process, AbstractSDEProcess, "The ODE bound")
        return ode_bits_per_dim(
            process,
            score_fn(process, self.model(), self.parameterization),
            x,
            key=key,
            num_levels=self.num_levels,
            dequantization=self.dequantization,
            num_samples=self.ode_samples,
            importance_weighted=self.ode_samples > 1,
            likelihood=self._ode_likelihood(tolerance, grid),
        )

    def ode_step_ends(
        self, x: Float[Array, " *shape"], *, key: PRNGKeyArray, tolerance: float | Float[Array, ""]
    ) -> Float[Array, " max_steps"]:
        """Where the adaptive solve of `ode_bpd` at `tolerance` ends its accepted steps,
        for one draw of the dequantisation of `x` (`ad.ODELikelihood.step_ends`);
        `ad.tuned_grid` of several examples' is a `grid` for `ode_bpd`."""
        process = require_capability(self.process, AbstractSDEProcess, "The ODE bound")
        key_q, key_ode = jax.random.split(key)
        u, _ = self.dequantization(process, key_q, x, self.num_levels)
        return self._ode_likelihood(tolerance, None).step_ends(
            process,
            score_fn(process, self.model(), self.parameterization),
            u,
            key=key_ode,
            t0=process.t_min,
        )

    def _ode_likelihood(
        self, tolerance: float | Float[Array, ""], grid: Float[Array, " points"] | None
    ) -> ODELikelihood:
        if grid is None:
            controller = diffrax.PIDController(rtol=tolerance, atol=tolerance)
        else:
            controller = diffrax.StepTo(ts=grid)
        return ODELikelihood(
            ODESolve(stepsize_controller=controller),
            ExactTrace() if self.ode_samples > 1 else HutchinsonTrace(),
        )

    def sample(
        self, key: PRNGKeyArray, sampler: Sampler, **sampler_kwargs
    ) -> Int[Array, " *shape"]:
        """One sample drawn with a core sampler, decoded to integer levels
        `0 .. num_levels - 1` by the decoder's mode (`process.decode`)."""
        process = require_capability(self.process, AbstractLinearProcess, "Sampling")
        score = score_fn(process, self.model(), self.parameterization)
        u = sampler(process, score, key, self.data_shape, **sampler_kwargs)
        return process.decode(u, self.num_levels)

    def gamma_curves(
        self,
        ts: Float[Array, " times"],
        *,
        key: PRNGKeyArray,
        xs: Float[Array, " n *shape"] | None = None,
    ) -> Float[Array, "n times dims"]:
        r"""The log-SNR $\gamma(t)$ of the data part at `ts`, one column per data dimension,
        for the state of each example of `xs` (its auxiliary part drawn from
        $q(\mathrm{aux} \mid x)$ with `key`) or, without `xs`, of four states drawn from
        the prior. Rows are identical for a process whose schedule does not depend on
        the state."""
        process = require_capability(self.process, AbstractLinearProcess, "gamma_curves")
        if xs is None:
            keys = jax.random.split(key, 4)
            states = jax.vmap(lambda k: process.prior_sample(k, self.data_shape))(keys)
        else:
            keys = jax.random.split(key, xs.shape[0])
            states = jax.vmap(lambda k, x: process.initial_state(k, x).state)(keys, xs)
        size = math.prod(self.data_shape)

        def curve(u):
            def at(t):
                return jnp.broadcast_to(process.gamma(u, t), self.data_shape).reshape(size)

            return jax.vmap(at)(ts)

        return jax.vmap(curve)(states)


def _denoiser(
    config: Config,
    data_shape: tuple[int, ...],
    input_shape: tuple[int, ...],
    cond_dim: int,
    num_levels: int,
    key: PRNGKeyArray,
) -> Callable:
    """The network named by `config.network`, for inputs of `input_shape` that begin
    (along the leading axis) with the data, of `data_shape` and `num_levels` levels: the
    Fourier features are of that leading block only."""
    cfg = config.network
    # Latents (process.autoencoder) are not on the data's bins: no features match them.
    matched = cfg.fourier == "matched" and not config.process.autoencoder
    fourier = matched_fourier_exponents(num_levels) if matched else ()
    fourier_channels = math.prod(data_shape) // math.prod(input_shape[1:]) if matched else 1
    if cfg.kind == "mlp":
        if cfg.dropout:
            raise ValueError("network.dropout applies to the UNet only; set it to 0 for the MLP.")
        return MLPDenoiser(
            input_shape,
            key=key,
            width=cfg.width,
            depth=cfg.depth,
            cond_dim=cond_dim,
            fourier_exponents=fourier,
            fourier_channels=fourier_channels,
        )
    return UNet(
        input_shape,
        key=key,
        channels=cfg.channels,
        n_layers=cfg.n_layers,
        dropout=cfg.dropout,
        cond_dim=cond_dim,
        unroll=cfg.unroll,
        fourier_exponents=fourier,
        fourier_channels=fourier_channels,
    )


# The encoder of a process (MuLAN's) draws from a stream of its own, so models without
# one keep the initial weights they had before (with JAX's partitionable threefry,
# fold_in(key, i) equals split(key, n)[i], hence a large constant).
_ENCODER_STREAM = 0x656E63


def build_model(
    config: Config, data_shape: tuple[int, ...], num_levels: int, *, key: PRNGKeyArray
) -> DiffusionModel:
    """The initial model of a run.

    **Arguments:**

    - `config`: the run's config (its `process`, `network` and `eval` sections and its
      `objective` are read);
      the process comes from the registry of kinds (`PROCESS_KINDS`).
    - `data_shape`: one example's shape, e.g. `(1, 8, 8)`.
    - `num_levels`: the number of levels of the data.
    - `key`: PRNG key of the initial weights.
    """
    data_shape = tuple(data_shape)
    key_schedule, key_net = jax.random.split(key)
    key_encoder = jax.random.fold_in(key, _ENCODER_STREAM)
    process = build_process(config.process, data_shape, key_schedule, key_encoder)
    input_shape, cond_dim = process.network_shape(data_shape)
    objective = config.objective
    if objective == "default":  # a capability, not a family: the bound's tier
        has_bound = isinstance(process, AbstractLinearGaussianProcess)
        objective = "elbo" if has_bound else "denoising"
    return DiffusionModel(
        process=process,
        denoiser=_denoiser(config, data_shape, input_shape, cond_dim, num_levels, key_net),
        parameterization=as_parameterization(config.process.parameterization),
        data_shape=data_shape,
        num_levels=num_levels,
        dequantization=DEQUANTIZATIONS[config.eval.dequantization],
        ode_samples=config.eval.ode_samples,
        times=build_times(config.process, process),
        objective=objective,
    )
