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
from .._custom_types import State
from .._discrete import to_levels
from .._latents import AbstractLatent, CategoricalLatent, GaussianLatent, NoLatent, TopKLatent
from .._likelihood import dense_vlb, mulan_dense_vlb, mulan_ode_bits_per_dim, ode_bits_per_dim
from .._losses import NELBO, batch_bound, mulan_nelbo, nelbo
from .._parameterizations import AbstractParameterization, as_parameterization, score_fn
from .._processes import VP, AbstractVPProcess, MuLAN, NonIsotropicVP
from .._sampling import mulan_sample
from .._schedules import (
    AbstractLatentSchedule,
    AbstractSchedule,
    CosineSchedule,
    FixedLatentSchedule,
    LearnedSchedule,
    LinearSchedule,
    MonotoneScheduleNetwork,
    PolynomialScheduleNetwork,
)
from ..nn import MLPDenoiser, MLPEncoder, UNet
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
        self,
        ts: Float[Array, " times"],
        *,
        key: PRNGKeyArray,
        xs: Float[Array, " n *shape"] | None = None,
    ) -> Float[Array, "curves times dims"]:
        r"""The schedules $\gamma(t)$ (negative log-SNR) at `ts`, one column per data
        dimension; `curves` indexes the schedules the model uses: one for a model whose
        schedule does not depend on the example, else one per example of `xs` (its latent
        drawn from $q(z \mid x)$ with `key`), or, without `xs`, four latents drawn from
        the prior."""


class _Dropout(eqx.Module):
    """A denoiser called with a dropout key: `net(*args, key=key)`."""

    net: Callable
    key: PRNGKeyArray

    def __call__(self, *args) -> State:
        return self.net(*args, key=self.key)


def _batch_with_dropout(
    bound: Callable[..., NELBO],
    denoiser: Callable,
    xs: Float[Array, " batch *shape"],
    key: PRNGKeyArray,
    train: bool,
) -> NELBO:
    """`bound(net, x, key, t)` over the batch (`ad.batch_bound`), each example's `net`
    the denoiser with its own dropout key when `train`."""

    def one(x, k, t):
        key_bound, key_dropout = jax.random.split(k)
        net = _Dropout(denoiser, key_dropout) if train else denoiser
        return bound(net, x, key_bound, t)

    return batch_bound(one, xs, key=key)


def _gamma_rows(
    process: AbstractVPProcess, data_shape: tuple[int, ...], ts: Float[Array, " times"]
) -> Float[Array, "times dims"]:
    r"""`process`'s $\gamma(t)$ at `ts`, broadcast over the data and flattened."""
    zeros = jnp.zeros(data_shape)
    size = math.prod(data_shape)

    def at(t):
        return jnp.broadcast_to(process.gamma(t, zeros), data_shape).reshape(size)

    return jax.vmap(at)(ts)


class VPModel(AbstractDiffusionModel):
    r"""A VP-type process (`VP`, `DiagonalVP`, `NonIsotropicVP`) and a denoiser.

    **Fields:**

    - `process`: the forward process; its schedule (and covariance) may be learned.
    - `denoiser`: a network `denoiser(u_t, t, *, key=None)` (key for dropout).
    - `parameterization`: what the network predicts.
    - `data_shape`, `num_levels`: one example's shape and number of levels.
    - `dequantization`, `ode_samples`: the ODE bound's dequantisation and its number of
      importance-weighted draws (see `EvalConfig`).
    """

    process: AbstractVPProcess
    denoiser: Callable
    parameterization: AbstractParameterization
    data_shape: tuple[int, ...] = eqx.field(static=True)
    num_levels: int = eqx.field(static=True)
    dequantization: str = eqx.field(default="process", static=True)
    ode_samples: int = eqx.field(default=1, static=True)

    def nelbo(
        self, xs: Float[Array, " batch *shape"], *, key: PRNGKeyArray, train: bool = False
    ) -> NELBO:
        """`ad.nelbo` per example, with VDM's low-discrepancy times across the batch."""

        def one(net, x, key, t):
            return nelbo(
                self.process,
                net,
                x,
                key=key,
                num_levels=self.num_levels,
                parameterization=self.parameterization,
                t=t,
            )

        return _batch_with_dropout(one, self.denoiser, xs, key, train)

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
        """`ode_samples` draws of the dequantisation (by default the process's own
        $q(z_0 \\mid x)$ and decoder, the consistent choice for a model trained on bin
        centres), importance-weighted, one Hutchinson probe per solve, Tsit5 at
        `rtol = atol = 1e-5`."""
        score = score_fn(self.process, self.denoiser, self.parameterization)
        return ode_bits_per_dim(
            self.process,
            score,
            x,
            key=key,
            num_levels=self.num_levels,
            dequantization=self.dequantization,
            num_samples=self.ode_samples,
            importance_weighted=True,
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
        self,
        ts: Float[Array, " times"],
        *,
        key: PRNGKeyArray,
        xs: Float[Array, " n *shape"] | None = None,
    ) -> Float[Array, "1 times dims"]:
        del key, xs
        return _gamma_rows(self.process, self.data_shape, ts)[None]


class MuLANModel(AbstractDiffusionModel):
    r"""MuLAN: a per-dimension schedule conditioned on an auxiliary latent, and a denoiser.

    The same interface as `VPModel`, so a VDM run and a MuLAN run differ in
    `process.kind` only. The bound is `ad.mulan_nelbo` (with its latent KL) per example
    under VDM's low-discrepancy times; the ODE bound is `ad.mulan_ode_bits_per_dim`,
    importance-weighted over `ode_samples` joint draws of the latent and the
    dequantisation.

    **Fields:**

    - `mulan`: encoder, latent family and schedule network (`ad.MuLAN`).
    - `denoiser`: a network `denoiser(h, t, cond, *, key=None)` built for
      `mulan.denoiser_input_shape` with `cond_dim = mulan.latent.size`.
    - `parameterization`, `data_shape`, `num_levels`, `dequantization`, `ode_samples`:
      as `VPModel`.
    """

    mulan: MuLAN
    denoiser: Callable
    parameterization: AbstractParameterization
    data_shape: tuple[int, ...] = eqx.field(static=True)
    num_levels: int = eqx.field(static=True)
    dequantization: str = eqx.field(default="process", static=True)
    ode_samples: int = eqx.field(default=1, static=True)

    def nelbo(
        self, xs: Float[Array, " batch *shape"], *, key: PRNGKeyArray, train: bool = False
    ) -> NELBO:
        """`ad.mulan_nelbo` per example, with VDM's low-discrepancy times across the
        batch."""

        def one(net, x, key, t):
            return mulan_nelbo(
                self.mulan,
                net,
                x,
                key=key,
                num_levels=self.num_levels,
                parameterization=self.parameterization,
                t=t,
            )

        return _batch_with_dropout(one, self.denoiser, xs, key, train)

    def dense_vlb(
        self, x: Float[Array, " *shape"], *, key: PRNGKeyArray, num_steps: int
    ) -> Float[Array, ""]:
        """`ad.mulan_dense_vlb` with `num_steps` stratified times on the `num_steps`-step
        grid: every step evaluated once, each with its own latent."""
        return mulan_dense_vlb(
            self.mulan,
            self.denoiser,
            x,
            key=key,
            num_times=num_steps,
            num_steps=num_steps,
            num_levels=self.num_levels,
            parameterization=self.parameterization,
        ).total

    def ode_bpd(self, x: Float[Array, " *shape"], *, key: PRNGKeyArray) -> Float[Array, ""]:
        return mulan_ode_bits_per_dim(
            self.mulan,
            self.denoiser,
            x,
            key=key,
            num_levels=self.num_levels,
            parameterization=self.parameterization,
            dequantization=self.dequantization,
            num_samples=self.ode_samples,
        )

    def sample(
        self, key: PRNGKeyArray, sampler: Sampler, **sampler_kwargs
    ) -> Int[Array, " *shape"]:
        """$z \\sim p(z)$, then `sampler` on `mulan.condition(z)`, then the decoder's mode."""
        return mulan_sample(
            self.mulan,
            self.denoiser,
            key,
            sampler,
            num_levels=self.num_levels,
            parameterization=self.parameterization,
            **sampler_kwargs,
        )

    def gamma_curves(
        self,
        ts: Float[Array, " times"],
        *,
        key: PRNGKeyArray,
        xs: Float[Array, " n *shape"] | None = None,
    ) -> Float[Array, "curves times dims"]:
        if xs is None:
            zs = jax.vmap(self.mulan.prior.sample)(jax.random.split(key, 4))
        else:
            zs = jax.vmap(self.mulan.encode)(jax.random.split(key, xs.shape[0]), xs)
        return jax.vmap(lambda z: _gamma_rows(self.mulan.condition(z), self.data_shape, ts))(zs)


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
        return VP(schedule)
    if cfg.learn_covariance:
        covariance = LearnedGFFCovariance(data_shape, power=cfg.power)
    else:
        covariance = GFFCovariance(data_shape, power=cfg.power)
    return NonIsotropicVP(schedule, covariance)


def _denoiser(
    config: Config, data_shape: tuple[int, ...], key: PRNGKeyArray, *, cond_dim: int = 0
) -> Callable:
    """The network named by `config.network`, for inputs of `data_shape`."""
    cfg = config.network
    if cfg.kind == "mlp":
        if cfg.dropout:
            raise ValueError("network.dropout applies to the UNet only; set it to 0 for the MLP.")
        return MLPDenoiser(data_shape, key=key, width=cfg.width, depth=cfg.depth, cond_dim=cond_dim)
    return UNet(
        data_shape,
        key=key,
        channels=cfg.channels,
        n_layers=cfg.n_layers,
        dropout=cfg.dropout,
        cond_dim=cond_dim,
    )


def _latent(config: Config) -> AbstractLatent:
    """The latent family named by `config.process.latent`."""
    cfg = config.process
    if cfg.latent == "none":
        if cfg.latent_size:
            raise ValueError("process.latent_size must be 0 for latent=none.")
        return NoLatent()
    family = {"topk": TopKLatent, "gaussian": GaussianLatent, "categorical": CategoricalLatent}
    return family[cfg.latent](size=cfg.latent_size) if cfg.latent_size else family[cfg.latent]()


def _encoder(
    config: Config, latent: AbstractLatent, data_shape: tuple[int, ...], key: PRNGKeyArray
) -> Callable | None:
    """MuLAN's encoder named by `config.process.encoder` (`None`: `MuLAN`'s default)."""
    if config.process.encoder == "mlp" and latent.num_params:
        return MLPEncoder(data_shape, latent.num_params, key=key)
    return None


def _latent_schedule(
    config: Config, latent: AbstractLatent, data_shape: tuple[int, ...], key: PRNGKeyArray
) -> AbstractLatentSchedule:
    """MuLAN's schedule family named by `config.process.schedule`."""
    cfg = config.process
    if cfg.schedule == "polynomial":
        family = PolynomialScheduleNetwork
    elif cfg.schedule == "learned":
        family = MonotoneScheduleNetwork
    else:
        return FixedLatentSchedule(_noise_schedule(config, key))
    return family(
        latent.size, data_shape, key=key, gamma_min=cfg.gamma_min, gamma_max=cfg.gamma_max
    )


def _check_process_options(config: Config) -> None:
    """Refuse options that the chosen `process.kind` would silently ignore."""
    cfg = config.process
    if cfg.kind != "nonisotropic" and (cfg.learn_covariance or cfg.power != 1.0):
        raise ValueError(
            "process.power and process.learn_covariance apply to kind=nonisotropic only."
        )
    if cfg.kind != "mulan" and cfg.schedule == "polynomial":
        raise ValueError(
            "process.schedule=polynomial is MuLAN's per-dimension schedule; use it with "
            "process.kind=mulan, or pick linear, cosine or learned."
        )
    if cfg.kind != "mulan" and (cfg.latent != "topk" or cfg.latent_size or cfg.encoder != "conv"):
        raise ValueError(
            "process.latent, process.latent_size and process.encoder apply to kind=mulan only."
        )


# MuLAN's encoder draws from a stream of its own, so VP models keep the initial weights
# they had before MuLAN joined (with JAX's partitionable threefry, fold_in(key, i) equals
# split(key, n)[i], hence a large constant).
_ENCODER_STREAM = 0x656E63


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
    _check_process_options(config)
    data_shape = tuple(data_shape)
    key_schedule, key_net = jax.random.split(key)
    key_encoder = jax.random.fold_in(key, _ENCODER_STREAM)
    common = {
        "parameterization": as_parameterization(config.process.parameterization),
        "data_shape": data_shape,
        "num_levels": num_levels,
        "dequantization": config.eval.dequantization,
        "ode_samples": config.eval.ode_samples,
    }
    if config.process.kind != "mulan":
        process = _process(config, _noise_schedule(config, key_schedule), data_shape)
        net = _denoiser(config, data_shape, key_net)
        return VPModel(process=process, denoiser=net, **common)
    latent = _latent(config)
    mulan = MuLAN(
        data_shape,
        key=key_encoder,
        gamma_min=config.process.gamma_min,
        gamma_max=config.process.gamma_max,
        latent=latent,
        schedule=_latent_schedule(config, latent, data_shape, key_schedule),
        encoder=_encoder(config, latent, data_shape, key_encoder),
    )
    net = _denoiser(config, mulan.denoiser_input_shape, key_net, cond_dim=latent.size)
    return MuLANModel(mulan=mulan, denoiser=net, **common)
