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

`MuLAN` is a process like any other: its state is `LatentState(x, z)`, the data (the
diffused part) and the latent, constant in time. `initial_state` draws
$z \sim q(z \mid x)$ and charges $\log q(z \mid x) - \log p(z)$ (its closed-form KL where
the family has one) as the bound's `auxiliary` term; every other method is that of
`condition(z)` on the data part; the prior draws $z \sim p(z)$. So `ad.nelbo`,
`ad.batch_nelbo`, `ad.dense_vlb`, `ad.ode_log_likelihood`, `ad.ode_bits_per_dim` (the
importance-weighted bound over joint draws of $z$ and the dequantisation) and every
sampler take it unchanged.

`MuLAN` holds the encoder, the latent family (`adaptive_diffusion.GaussianLatent`,
`CategoricalLatent`, `TopKLatent`, or `NoLatent`) and the schedule family
(`PolynomialScheduleNetwork`, `MonotoneScheduleNetwork`, or `FixedLatentSchedule`). The
denoising network is separate, as for every other process: an array network
`net(h, t, cond)` built for `network_shape(data_shape)` (the data with its channels
doubled, conditioned on `latent.size` numbers), e.g.
`nn.UNet(*mulan.network_shape(x.shape), key=...)` with the second item as `cond_dim`,
turned by `mulan.denoiser(net)` into the `model(u_t, t)` the core takes.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._custom_types import Data, Gamma, Time
from .._latents import AbstractLatent, TopKLatent
from .._schedules import AbstractLatentSchedule, AbstractSchedule, PolynomialScheduleNetwork
from ..nn import ConvEncoder, MLPEncoder
from ._base import AbstractSDEProcess, InitialState
from ._vp import DiagonalVP


Latent = Float[Array, " latent"]


class LatentState(eqx.Module):
    r"""MuLAN's state: the data part `x` (diffused), the latent `z` and its schedule
    $\gamma(z, \cdot)$ (both constant in time).

    `schedule` is the schedule network evaluated at `z`, once per example: `MuLAN` fills
    it where it draws `z` (`initial_state`, `prior_sample`; `MuLAN.state(x, z)` by hand),
    and every method then reads it instead of running the network again (the bound uses
    the schedule six times per example, and one evaluation means one backward pass
    through the network instead of six). `None`, as in `LatentState(x, z)`, runs the
    network at each use: the same values.
    """

    x: Data
    z: Latent
    schedule: AbstractSchedule | None = None


class LatentPrior(eqx.Module):
    r"""The prior $p(z)$ of a latent family: `sample(key)` and `log_prob(z)`."""

    latent: AbstractLatent

    def sample(self, key: PRNGKeyArray) -> Latent:
        """A draw $z \\sim p(z)$."""
        return self.latent.prior_sample(key)

    def log_prob(self, z: Latent) -> Float[Array, ""]:
        """$\\log p(z)$ in nats."""
        return self.latent.prior_log_prob(z)


class LatentDenoiser(eqx.Module):
    r"""An array network as MuLAN's `model(u_t, t)`, for `u_t = LatentState(x_t, z)`.

    `model(u, t) = net(concat([x_t, g]), t, z)[:C]`, where the input gains one channel per
    data channel holding $g = (\gamma(z, t) - \gamma_{\min}) / (\gamma_{\max} -
    \gamma_{\min}) \in [0, 1]$, the per-dimension log-SNR rescaled as the reference rescales
    it, concatenated along the leading (channel) axis; $z$ goes in as the conditioning
    vector (`cond`, omitted when $z$ is empty); the output keeps the first `C` channels
    (`C = x_t.shape[0]`). Built by `MuLAN.denoiser`.
    """

    net: Callable[..., Data]
    mulan: "MuLAN"

    def __call__(self, u: LatentState, t: Time) -> Data:
        mulan = self.mulan
        gamma = jnp.broadcast_to(mulan.conditioned(u).gamma(u.x, t), u.x.shape)
        level = (gamma - mulan.gamma_min) / (mulan.gamma_max - mulan.gamma_min)
        cond = u.z if u.z.size else None
        out = self.net(jnp.concatenate([u.x, level.astype(u.x.dtype)]), t, cond)
        return out[: u.x.shape[0]]


class MuLAN(AbstractSDEProcess):
    r"""MuLAN: encoder, latent family and schedule network; a `DiagonalVP` per latent.

    **Arguments:**

    - `data_shape`: the shape of one example, `(C, H, W)` or any other.
    - `key`: PRNG key for the encoder and the schedule network built by default.
    - `gamma_min`, `gamma_max`: the log-SNR endpoints every dimension's schedule runs
      between (VDM's $-13.3$, $5$; the initial ones, if learned), also the fixed range
      `denoiser` rescales $\gamma$ by.
    - `learn_endpoints`: whether the default schedule network learns its endpoints
      (shared by every dimension and latent, as VDM's `LearnedSchedule` learns its own),
      a departure from the reference, whose `poly_fixedend` pins them; `False` (the
      default) reproduces the paper. On 17-level digits the pinned $-13.3$ leaves most of
      the bound at log-SNRs where the denoiser cannot resolve the bins. Ignored when
      `schedule` is given (build it with its own `learn_endpoints`).
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
        learn_endpoints: bool = False,
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
                learn_endpoints=learn_endpoints,
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

    def posterior_params(self, x: Data) -> Float[Array, " params"]:
        r"""The encoder's output for one example: the parameters of $q(z \mid x)$."""
        if self.encoder is None:
            return jnp.zeros((0,), x.dtype)
        return self.encoder(x)

    def encode(self, key: PRNGKeyArray, x: Data) -> Latent:
        r"""A draw $z \sim q(z \mid x)$ (reparameterised or straight-through)."""
        return self.latent.sample(key, self.posterior_params(x))

    def condition(self, z: Latent) -> DiagonalVP:
        r"""The forward process for latent `z`: a `DiagonalVP` whose `schedule(t)` is
        $\gamma(z, t)$, shaped like the data (or a scalar, for a fixed scalar schedule)."""
        return DiagonalVP(self.schedule(z))

    def state(self, x: Data, z: Latent) -> LatentState:
        r"""The state of data `x` with latent `z`, its schedule $\gamma(z, \cdot)$
        evaluated once (its numbers as arrays: a state is a pytree of arrays)."""
        schedule = jax.tree.map(
            lambda leaf: jnp.asarray(leaf) if isinstance(leaf, float | int) else leaf,
            self.schedule(z),
        )
        return LatentState(x, z, schedule)

    def conditioned(self, u: LatentState) -> DiagonalVP:
        r"""The `DiagonalVP` of the state's latent: `condition(u.z)`, from the schedule
        the state carries where it has one."""
        if u.schedule is None:
            return self.condition(u.z)
        return DiagonalVP(u.schedule)

    # The state: data and latent.

    @property
    def t_min(self) -> float:
        return 0.0

    def initial_state(self, key: PRNGKeyArray, x: Data) -> InitialState:
        r"""$z \sim q(z \mid x)$; the cost is the family's `log_ratio`
        $\log q(z \mid x) - \log p(z)$ and its `kl` (see `TopKLatent` for the top-$k$
        latent's upper bound)."""
        params = self.posterior_params(x)
        z = self.latent.sample(key, params)
        return InitialState(
            self.state(x, z), self.latent.log_ratio(z, params), self.latent.kl(params)
        )

    def data(self, u: LatentState) -> Data:
        return u.x

    def with_data(self, u: LatentState, x: Data) -> LatentState:
        return LatentState(x, u.z, u.schedule)

    def partition(self, u: LatentState) -> tuple[Data, tuple[Latent, AbstractSchedule | None]]:
        return u.x, (u.z, u.schedule)

    def combine(
        self, diffused: Data, constant: tuple[Latent, AbstractSchedule | None]
    ) -> LatentState:
        return LatentState(diffused, *constant)

    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> LatentState:
        r"""$z \sim p(z)$ and $x_1 \sim \mathcal N(0, I)$."""
        key_z, key_x = jax.random.split(key)
        u = self.state(jnp.zeros(shape), self.latent.prior_sample(key_z))
        return self.with_data(u, self.conditioned(u).prior_sample(key_x, shape))

    def prior_log_prob(self, u: LatentState) -> Float[Array, ""]:
        r"""$\log \mathcal N(x_1; 0, I)$, given $z$."""
        return self.conditioned(u).prior_log_prob(u.x)

    def decode(self, u: LatentState, num_levels: int) -> Int[Array, "*shape"]:
        return self.conditioned(u).decode(u.x, num_levels)

    def network_shape(self, data_shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        """The data with the leading (channel) axis doubled, `(2 C, H, W)` or `(2 D,)`,
        conditioned on `latent.size` numbers; see `LatentDenoiser`."""
        return (2 * data_shape[0], *data_shape[1:]), self.latent.size

    def denoiser(self, net: Callable[..., Array]) -> LatentDenoiser:
        return LatentDenoiser(net, self)

    # Everything else: the DiagonalVP of the state's latent, on the data part.

    def perturb(self, u0: LatentState, t: Time, eps: Data) -> LatentState:
        return self.with_data(u0, self.conditioned(u0).perturb(u0.x, t, eps))

    def marginal_scale(self, u: LatentState, t: Time, eps: Data) -> Data:
        return self.conditioned(u).marginal_scale(u.x, t, eps)

    def score_from_eps(self, u: LatentState, t: Time, eps: Data) -> Data:
        return self.conditioned(u).score_from_eps(u.x, t, eps)

    def eps_from_score(self, u: LatentState, t: Time, score: Data) -> Data:
        return self.conditioned(u).eps_from_score(u.x, t, score)

    def eps_from_x0(self, u: LatentState, t: Time, x0: Data) -> Data:
        return self.conditioned(u).eps_from_x0(u.x, t, x0)

    def x0_from_eps(self, u: LatentState, t: Time, eps: Data) -> Data:
        return self.conditioned(u).x0_from_eps(u.x, t, eps)

    def eps_from_v(self, u: LatentState, t: Time, v: Data) -> Data:
        return self.conditioned(u).eps_from_v(u.x, t, v)

    def v_from_eps(self, u: LatentState, t: Time, eps: Data) -> Data:
        return self.conditioned(u).v_from_eps(u.x, t, eps)

    def gamma(self, u: LatentState, t: Time) -> Gamma:
        return self.conditioned(u).gamma(u.x, t)

    def log_det_scale(self, u: LatentState, t: Time) -> Float[Array, ""]:
        return self.conditioned(u).log_det_scale(u.x, t)

    def decoder_nll(self, u: LatentState, u0: LatentState, num_levels: int) -> Float[Array, ""]:
        return self.conditioned(u).decoder_nll(u.x, u0.x, num_levels)

    def prior_kl(self, u0: LatentState) -> Float[Array, ""]:
        return self.conditioned(u0).prior_kl(u0.x)

    def diffusion_loss(self, u: LatentState, t: Time, eps: Data, eps_hat: Data) -> Float[Array, ""]:
        return self.conditioned(u).diffusion_loss(u.x, t, eps, eps_hat)

    def diffusion_loss_discrete(
        self, u: LatentState, s: Time, t: Time, eps: Data, eps_hat: Data
    ) -> Float[Array, ""]:
        return self.conditioned(u).diffusion_loss_discrete(u.x, s, t, eps, eps_hat)

    def ancestral_mean(self, u: LatentState, t: Time, s: Time, eps_hat: Data) -> Data:
        return self.conditioned(u).ancestral_mean(u.x, t, s, eps_hat)

    def posterior_noise(self, u: LatentState, t: Time, s: Time, xi: Data) -> Data:
        return self.conditioned(u).posterior_noise(u.x, t, s, xi)

    def transition_noise(self, u: LatentState, t: Time, s: Time, xi: Data) -> Data:
        return self.conditioned(u).transition_noise(u.x, t, s, xi)

    def drift(self, u: LatentState, t: Time) -> Data:
        return self.conditioned(u).drift(u.x, t)

    def diffusion_scale(self, u: LatentState, t: Time) -> Gamma:
        return self.conditioned(u).diffusion_scale(u.x, t)

    def noise_apply(self, w: Data) -> Data:
        """White noise: $B = I$."""
        return w

    def probability_flow_eps(self, u: LatentState, t: Time, eps: Data) -> Data:
        return self.conditioned(u).probability_flow_eps(u.x, t, eps)
