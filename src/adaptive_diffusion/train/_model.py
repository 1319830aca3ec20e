r"""What a run trains: a forward process and a denoiser behind one small interface.

The trainer, the evaluator, the sampler and the plots call only the methods of
`AbstractDiffusionModel`, each per example or per batch, pure, and `jit`-able, so a
run with another process family is a different model class built by `build_model`,
not a branch in the training loop.
"""

import abc
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._covariance import GFFCovariance, LearnedGFFCovariance
from .._custom_types import State, Time
from .._discrete import to_levels
from .._likelihood import dense_vlb, ode_bits_per_dim
from .._losses import NELBO, antithetic_times, nelbo
from .._parameterizations import AbstractParameterization, as_parameterization, score_fn
from .._processes import VP, AbstractVPProcess, NonIsotropicVP
from .._schedules import AbstractSchedule, CosineSchedule, LearnedSchedule, LinearSchedule
from ..nn import MLPDenoiser, UNet
from ._config import Config


Sampler = Callable[..., State]
"""A core sampler, `sampler(process, score_fn, key, shape, **kwargs) -> u_0`."""


class AbstractDiffusionModel(eqx.Module):
    """A trainable diffusion model over examples of one shape with `num_levels` levels.

    All methods act on host-free JAX values and can be `jit`-ted; the arrays of the
    module (network weights and any learned process parameters) are what is trained.
    """

    data_shape: eqx.AbstractVar[tuple[int, ...]]
    num_levels: eqx.AbstractVar[int]

    @abc.abstractmethod
    def nelbo(
        self, xs: Float[Array, " batch *shape"], *, key: PRNGKeyArray, train: bool = False
    ) -> NELBO:
        """The one-sample negative ELBO of each example, bits/dim, fields shaped `(batch,)`.

        **Arguments:** `xs`, a batch on the grid of bin centres; `key`; `train`, whether
        training-only randomness (dropout) is on.
        """

    @abc.abstractmethod
    def dense_vlb(
        self, x: Float[Array, " *shape"], *, key: PRNGKeyArray, num_steps: int
    ) -> Float[Array, ""]:
        """The `num_steps`-step variational bound of one example with every step evaluated,
        bits/dim."""

    @abc.abstractmethod
    def ode_bpd(self, x: Float[Array, " *shape"], *, key: PRNGKeyArray) -> Float[Array, ""]:
        """The probability-flow ODE bound on $-\\log_2 P(x) / D$ of one example."""

    @abc.abstractmethod
    def sample(
        self, key: PRNGKeyArray, sampler: Sampler, **sampler_kwargs
    ) -> Int[Array, " *shape"]:
        """One sample, as integer levels `0 .. num_levels - 1`, drawn with a core sampler."""

    @abc.abstractmethod
    def gamma_curves(
        self, ts: Float[Array, " times"], *, key: PRNGKeyArray
    ) -> Float[Array, "curves times dims"]:
        r"""The log-SNR schedules $\gamma(t)$ at `ts`, one row per dimension of the data;
        `curves` indexes the schedules the model uses (one, or one per latent drawn
        from the prior with `key`)."""


class _Dropout(eqx.Module):
    """A denoiser called with a dropout key: `net(u, t, key=key)`."""

    net: Callable
    key: PRNGKeyArray

    def __call__(self, u: State, t: Time) -> State:
        return self.net(u, t, key=self.key)


class VPModel(AbstractDiffusionModel):
    r"""A VP-type process (`VP`, `DiagonalVP`, `NonIsotropicVP`) and a denoiser.

    **Fields:**

    - `process`: the forward process; its schedule (and covariance) may be learned.
    - `denoiser`: a network `denoiser(u_t, t, *, key=None)` (key for dropout).
    - `parameterization`: what the network predicts.
    - `data_shape`, `num_levels`: one example's shape and number of levels.
    """

    process: AbstractVPProcess
    denoiser: Callable
    parameterization: AbstractParameterization
    data_shape: tuple[int, ...] = eqx.field(static=True)
    num_levels: int = eqx.field(static=True)

    def nelbo(
        self, xs: Float[Array, " batch *shape"], *, key: PRNGKeyArray, train: bool = False
    ) -> NELBO:
        """`ad.nelbo` per example, with VDM's low-discrepancy times across the batch."""
        key_t, key_rest = jax.random.split(key)
        times = antithetic_times(key_t, xs.shape[0])

        def one(x, k, t):
            key_bound, key_dropout = jax.random.split(k)
            net = _Dropout(self.denoiser, key_dropout) if train else self.denoiser
            return nelbo(
                self.process,
                net,
                x,
                key=key_bound,
                num_levels=self.num_levels,
                parameterization=self.parameterization,
                t=t,
            )

        return jax.vmap(one)(xs, jax.random.split(key_rest, xs.shape[0]), times)

    def dense_vlb(
        self, x: Float[Array, " *shape"], *, key: PRNGKeyArray, num_steps: int
    ) -> Float[Array, ""]:
        return dense_vlb(
            self.process,
            self.denoiser,
            x,
            key=key,
            num_steps=num_steps,
            num_levels=self.num_levels,
            parameterization=self.parameterization,
        ).total

    def ode_bpd(self, x: Float[Array, " *shape"], *, key: PRNGKeyArray) -> Float[Array, ""]:
        """Dequantised by the process's own $q(z_0 \\mid x)$ and decoder (the consistent
        choice for a model trained on bin centres), one Hutchinson probe, Tsit5 at
        `rtol = atol = 1e-5`."""
        score = score_fn(self.process, self.denoiser, self.parameterization)
        return ode_bits_per_dim(
            self.process,
            score,
            x,
            key=key,
            num_levels=self.num_levels,
            dequantization="process",
        )

    def sample(
        self, key: PRNGKeyArray, sampler: Sampler, **sampler_kwargs
    ) -> Int[Array, " *shape"]:
        """Sample $z_0$, then decode with the decoder's mode, the bin nearest
        $z_0 / \\alpha_0$."""
        score = score_fn(self.process, self.denoiser, self.parameterization)
        z0 = sampler(self.process, score, key, self.data_shape, **sampler_kwargs)
        alpha0, _ = self.process.alpha_sigma(0.0, z0)
        return to_levels(z0 / alpha0, self.num_levels)

    def gamma_curves(
        self, ts: Float[Array, " times"], *, key: PRNGKeyArray
    ) -> Float[Array, "1 times dims"]:
        del key
        zeros = jnp.zeros(self.data_shape)
        size = math.prod(self.data_shape)

        def at(t):
            return jnp.broadcast_to(self.process.gamma(t, zeros), self.data_shape).reshape(size)

        return jax.vmap(at)(ts)[None]


def _noise_schedule(config: Config, key: PRNGKeyArray) -> AbstractSchedule:
    """The log-SNR schedule named by `config.process.schedule`."""
    cfg = config.process
    if cfg.schedule == "linear":
        return LinearSchedule(cfg.gamma_min, cfg.gamma_max)
    if cfg.schedule == "cosine":
        return CosineSchedule(cfg.gamma_min, cfg.gamma_max)
    return LearnedSchedule(key=key, gamma_min=cfg.gamma_min, gamma_max=cfg.gamma_max)


def _process(
    config: Config, schedule: AbstractSchedule, data_shape: tuple[int, ...]
) -> AbstractVPProcess:
    """The VP-type process named by `config.process.kind`."""
    cfg = config.process
    if cfg.kind == "vp":
        if cfg.learn_covariance or cfg.power != 1.0:
            raise ValueError(
                "process.power and process.learn_covariance apply to kind=nonisotropic only."
            )
        return VP(schedule)
    if cfg.learn_covariance:
        covariance = LearnedGFFCovariance(data_shape, power=cfg.power)
    else:
        covariance = GFFCovariance(data_shape, power=cfg.power)
    return NonIsotropicVP(schedule, covariance)


def _denoiser(config: Config, data_shape: tuple[int, ...], key: PRNGKeyArray) -> Callable:
    """The network named by `config.network`."""
    cfg = config.network
    if cfg.kind == "mlp":
        if cfg.dropout:
            raise ValueError("network.dropout applies to the UNet only; set it to 0 for the MLP.")
        return MLPDenoiser(data_shape, key=key, width=cfg.width, depth=cfg.depth)
    return UNet(
        data_shape, key=key, channels=cfg.channels, n_layers=cfg.n_layers, dropout=cfg.dropout
    )


def build_model(
    config: Config, data_shape: tuple[int, ...], num_levels: int, *, key: PRNGKeyArray
) -> AbstractDiffusionModel:
    """The initial model of a run.

    **Arguments:**

    - `config`: the run's config (its `process` and `network` sections are read).
    - `data_shape`: one example's shape, e.g. `(1, 8, 8)`.
    - `num_levels`: the number of levels of the data.
    - `key`: PRNG key of the initial weights.
    """
    key_schedule, key_net = jax.random.split(key)
    schedule = _noise_schedule(config, key_schedule)
    return VPModel(
        process=_process(config, schedule, tuple(data_shape)),
        denoiser=_denoiser(config, data_shape, key_net),
        parameterization=as_parameterization(config.process.parameterization),
        data_shape=tuple(data_shape),
        num_levels=num_levels,
    )
