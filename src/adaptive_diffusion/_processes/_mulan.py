r"""MuLAN: a learned, per-dimension, data-conditioned noise schedule with an auxiliary latent.

Sahoo, Gokaslan, De Sa & Kuleshov, "Diffusion Models With Learned Adaptive Noise"
(NeurIPS 2024; reference code s-sahoo/MuLAN). An encoder gives $q(z \mid x)$ over an
auxiliary latent $z$ with prior $p(z)$; a schedule network maps $z$ to one log-SNR
schedule per data dimension, $\gamma(z, t)$; for each $z$ the forward process is the
`DiagonalVP` with that schedule, and the denoiser sees $z$ and $\gamma(z, t)$. The bound is
$$-\log p(x) \le \mathbb E_{q(z \mid x)}\big[-\log p(x \mid z)\big]
+ \mathrm{KL}(q(z \mid x) \Vert p(z)),$$
with $-\log p(x \mid z)$ bounded by the diffusion NELBO of `condition(z)` (VDM's terms,
now per dimension: $\tfrac12 \sum_i \gamma_i'(z, t)(\varepsilon_i - \hat\varepsilon_i)^2$)
or computed by the probability-flow ODE.

`MuLAN` holds the encoder, the latent family (`adaptive_diffusion.GaussianLatent`,
`CategoricalLatent`, `TopKLatent`, or `NoLatent`) and the schedule family
(`PolynomialScheduleNetwork`, `MonotoneScheduleNetwork`, or `FixedLatentSchedule`). The
denoising network is separate, as for every other process: a network `net(h, t, cond)`
built for `mulan.denoiser_input_shape` with `cond_dim = mulan.latent.size` (e.g.
`nn.UNet(mulan.denoiser_input_shape, cond_dim=mulan.latent.size, key=...)`), wrapped for
one latent by `mulan.denoiser(net, z)` into the `model(u_t, t)` that the core's bound,
likelihood and samplers take. The entry points for training and evaluation are
`mulan_nelbo` / `mulan_batch_nelbo` (bound), `mulan_dense_vlb` and
`mulan_ode_bits_per_dim` (evaluation), and `mulan_sample` (sampling), in the modules
of their kind.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._custom_types import Data, Time
from .._latents import AbstractLatent, TopKLatent
from .._schedules import AbstractLatentSchedule, PolynomialScheduleNetwork
from ..nn import ConvEncoder, MLPEncoder
from ._vp import DiagonalVP


class LatentPrior(eqx.Module):
    r"""The prior $p(z)$ of a latent family: `sample(key)` and `log_prob(z)`."""

    latent: AbstractLatent

    def sample(self, key: PRNGKeyArray) -> Float[Array, " latent"]:
        """A draw $z \\sim p(z)$."""
        return self.latent.prior_sample(key)

    def log_prob(self, z: Float[Array, " latent"]) -> Float[Array, ""]:
        """$\\log p(z)$ in nats."""
        return self.latent.prior_log_prob(z)


class LatentDenoiser(eqx.Module):
    r"""A network conditioned on one latent, as the core's `model(u_t, t)`.

    `model(u, t) = net(concat([u, g]), t, z)[:C]`, where the input gains one channel per
    data channel holding $g = (\gamma(z, t) - \gamma_{\min}) / (\gamma_{\max} -
    \gamma_{\min}) \in [0, 1]$, the per-dimension log-SNR rescaled as the reference rescales
    it, concatenated along the leading (channel) axis; $z$ goes in as the conditioning
    vector (`cond`, omitted when $z$ is empty); the output keeps the first `C` channels
    (`C = u.shape[0]`). Built by `MuLAN.denoiser`.
    """

    net: Callable[..., Data]
    process: DiagonalVP
    z: Float[Array, " latent"]
    gamma_min: float = eqx.field(static=True)
    gamma_max: float = eqx.field(static=True)

    def __call__(self, u: Data, t: Time) -> Data:
        gamma = jnp.broadcast_to(self.process.gamma(t, u), u.shape)
        level = (gamma - self.gamma_min) / (self.gamma_max - self.gamma_min)
        cond = self.z if self.z.size else None
        out = self.net(jnp.concatenate([u, level.astype(u.dtype)]), t, cond)
        return out[: u.shape[0]]


class MuLAN(eqx.Module):
    r"""MuLAN: encoder, latent family and schedule network; a `DiagonalVP` per latent.

    **Arguments:**

    - `data_shape`: the shape of one example, `(C, H, W)` or any other.
    - `key`: PRNG key for the encoder and the schedule network built by default.
    - `gamma_min`, `gamma_max`: the log-SNR endpoints every dimension's schedule runs
      between (VDM's $-13.3$, $5$), also the range `denoiser` rescales $\gamma$ by.
    - `latent`: the latent family; default the reference's `TopKLatent()` (50 units,
      15 hot, sum-of-Gamma noise).
    - `schedule`: the schedule family $z \mapsto \gamma(z, \cdot)$; default a
      `PolynomialScheduleNetwork` (the reference's `poly_fixedend`).
    - `encoder`: a callable from one example to the `latent.num_params` parameters of
      $q(z \mid x)$; default a `ConvEncoder` for `(C, H, W)` data and an `MLPEncoder`
      otherwise. Unused (and `None`) for `NoLatent`.

    **Fields:** `latent`, `schedule`, `encoder`, `data_shape`, `gamma_min`, `gamma_max`.

    **Contract:** `encode(key, x) -> z`, `condition(z) -> DiagonalVP`, `prior`.
    """

    latent: AbstractLatent
    schedule: AbstractLatentSchedule
    encoder: Callable[[Data], Float[Array, " params"]] | None
    data_shape: tuple[int, ...] = eqx.field(static=True)
    gamma_min: float = eqx.field(static=True)
    gamma_max: float = eqx.field(static=True)

    def __init__(
        self,
        data_shape: tuple[int, ...],
        *,
        key: PRNGKeyArray,
        gamma_min: float = -13.3,
        gamma_max: float = 5.0,
        latent: AbstractLatent = TopKLatent(),
        schedule: AbstractLatentSchedule | None = None,
        encoder: Callable[[Data], Float[Array, " params"]] | None = None,
    ):
        if not gamma_min < gamma_max:
            raise ValueError(f"MuLAN needs gamma_min < gamma_max, got {gamma_min}, {gamma_max}.")
        self.data_shape = tuple(int(d) for d in data_shape)
        self.gamma_min = gamma_min
        self.gamma_max = gamma_max
        self.latent = latent
        key_schedule, key_encoder = jax.random.split(key)
        if schedule is None:
            schedule = PolynomialScheduleNetwork(
                latent.size,
                self.data_shape,
                key=key_schedule,
                gamma_min=gamma_min,
                gamma_max=gamma_max,
            )
        self.schedule = schedule
        if latent.num_params == 0:
            encoder = None
        elif encoder is None:
            if len(self.data_shape) == 3:
                encoder = ConvEncoder(self.data_shape, latent.num_params, key=key_encoder)
            else:
                encoder = MLPEncoder(self.data_shape, latent.num_params, key=key_encoder)
        self.encoder = encoder

    @property
    def prior(self) -> LatentPrior:
        """The prior $p(z)$: `mulan.prior.sample(key)`, `mulan.prior.log_prob(z)`."""
        return LatentPrior(self.latent)

    @property
    def denoiser_input_shape(self) -> tuple[int, ...]:
        """The input shape of the network `LatentDenoiser` wraps: the data with its leading
        (channel) axis doubled, `(2 C, H, W)` or `(2 D,)`."""
        return (2 * self.data_shape[0], *self.data_shape[1:])

    def posterior_params(self, x: Data) -> Float[Array, " params"]:
        r"""The encoder's output for one example: the parameters of $q(z \mid x)$."""
        if self.encoder is None:
            return jnp.zeros((0,), x.dtype)
        return self.encoder(x)

    def encode(self, key: PRNGKeyArray, x: Data) -> Float[Array, " latent"]:
        r"""A draw $z \sim q(z \mid x)$ (reparameterised or straight-through)."""
        return self.latent.sample(key, self.posterior_params(x))

    def condition(self, z: Float[Array, " latent"]) -> DiagonalVP:
        r"""The forward process for latent `z`: a `DiagonalVP` whose `schedule(t)` is
        $\gamma(z, t)$, shaped like the data (or a scalar, for a fixed scalar schedule)."""
        return DiagonalVP(self.schedule(z))

    def denoiser(self, net: Callable[..., Data], z: Float[Array, " latent"]) -> LatentDenoiser:
        r"""`net(h, t, cond)` conditioned on `z`, as the core's `model(u_t, t)`; see
        `LatentDenoiser`. `net` is built for `denoiser_input_shape` with
        `cond_dim = latent.size` (or is any callable of that signature)."""
        return LatentDenoiser(net, self.condition(z), z, self.gamma_min, self.gamma_max)
