r"""Latent diffusion: any linear process run on the latents of a frozen autoencoder."""

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from .._custom_types import Data, Gamma, Noise, Scalar, State, Time
from .._discrete import to_levels
from .._frozen import Frozen
from ._base import AbstractLinearProcess, InitialState


@runtime_checkable
class Codec(Protocol):
    """What latent diffusion needs of an autoencoder (`nn.Autoencoder` is one)."""

    @property
    def latent_shape(self) -> tuple[int, ...]: ...

    @property
    def latent_scale(self) -> Float[Array, ""]: ...

    def encode(self, x: Data) -> Array: ...

    def decode(self, z: Array) -> Data: ...


class LatentDiffusion(AbstractLinearProcess):
    r"""`process` on $z = E(x)/c$, the latent of a frozen autoencoder $(E, D)$ divided by
    its scale $c$ (`latent_scale`, so the process sees unit-scale data), and images
    $D(c\,\hat z_0)$ back (Rombach et al. 2022).

    Every method is `process`'s on the latent state, except three: `initial_state`
    encodes, `prior_sample` draws the latent's shape, and `decode` maps the clean latent
    of a state at `t_min` ($\hat z_0 = A^{-1} u$, the noise-free estimate) through $D$ to
    the nearest levels. The network sees `process.network_shape(latent_shape)`. The
    autoencoder is `Frozen`: training never updates it, and no gradient reaches it.

    **What is a likelihood and what is not.** A bound or ODE likelihood of $z$ under a
    Gaussian `process` is a density of the latents, not a probability of the images: the
    decoder is deterministic and the encoder is not its inverse, so no such figure is
    one of $x$, and this process offers neither (it is a linear process only, whatever
    `process` is). It trains by the denoising loss; compare it by sample quality.

    **Arguments:**

    - `process`: any linear process (`DDPM` with any noise family, `VP`, ...).
    - `autoencoder`: a trained autoencoder (`nn.Autoencoder`, `train.load_autoencoder`).
    """

    process: AbstractLinearProcess
    autoencoder: Frozen[Codec]

    def __init__(self, process: AbstractLinearProcess, autoencoder: Codec):
        self.process = process
        self.autoencoder = Frozen(autoencoder)

    def limitation(self) -> str:
        return (
            "Latent diffusion models the autoencoder's latents: a bound or ODE likelihood "
            "of them is no likelihood of the images, so none is offered (see "
            "ad.LatentDiffusion); train with the denoising loss and compare by sample "
            "quality (FID, KID, precision/recall)."
        )

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The shape of one latent, the data shape `process` sees."""
        return tuple(self.autoencoder.module.latent_shape)

    def encode(self, x: Data) -> Float[Array, "*latent"]:
        """$E(x)/c$: the latent of an image, on the process's unit scale."""
        codec = self.autoencoder.value
        return codec.encode(x) / codec.latent_scale

    def decode_latent(self, z: Float[Array, "*latent"]) -> Data:
        """$D(c z)$: the image of a unit-scale latent, on the data's $[-1, 1]$ scale."""
        codec = self.autoencoder.value
        return codec.decode(z * codec.latent_scale)

    @property
    def t_min(self) -> float | Scalar:
        return self.process.t_min

    def initial_state(self, key: PRNGKeyArray, x: Data) -> InitialState:
        return self.process.initial_state(key, self.encode(x))

    def data(self, u: State) -> Data:
        return self.process.data(u)

    def with_data(self, u: State, x: Data) -> State:
        return self.process.with_data(u, x)

    def partition(self, u: State) -> tuple[Noise, PyTree]:
        return self.process.partition(u)

    def combine(self, diffused: Noise, constant: PyTree) -> State:
        return self.process.combine(diffused, constant)

    def sample_marginal(self, key: PRNGKeyArray, u0: State, t: Time) -> tuple[State, Noise]:
        return self.process.sample_marginal(key, u0, t)

    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> State:
        """A latent state from `process`'s prior; `shape`, the image's, is not needed."""
        del shape
        return self.process.prior_sample(key, self.latent_shape)

    def prior_log_prob(self, u: State) -> Float[Array, ""]:
        return self.process.prior_log_prob(u)

    def decode(self, u: State, num_levels: int) -> Int[Array, "*shape"]:
        """The levels nearest $D(c\\,\\hat z_0)$, $\\hat z_0$ the noise-free estimate of
        the latent at `t_min`."""
        diffused, constant = self.partition(u)
        clean = self.process.x0_from_eps(u, self.t_min, jnp.zeros_like(diffused))
        z = self.process.data(self.process.combine(clean, constant))
        return to_levels(self.decode_latent(z), num_levels)

    def network_shape(self, data_shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        """`process.network_shape(latent_shape)`; `data_shape`, the image's, is not needed."""
        del data_shape
        return self.process.network_shape(self.latent_shape)

    def denoiser(self, net: Callable[..., Array]) -> Callable[[State, Time], Noise]:
        return self.process.denoiser(net)

    def sample_noise(self, key: PRNGKeyArray, like: Noise) -> Noise:
        return self.process.sample_noise(key, like)

    def perturb(self, u0: State, t: Time, eps: Noise) -> State:
        return self.process.perturb(u0, t, eps)

    def marginal_scale(self, u: State, t: Time, eps: Noise) -> Noise:
        return self.process.marginal_scale(u, t, eps)

    def eps_from_x0(self, u: State, t: Time, x0: Noise) -> Noise:
        return self.process.eps_from_x0(u, t, x0)

    def x0_from_eps(self, u: State, t: Time, eps: Noise) -> Noise:
        return self.process.x0_from_eps(u, t, eps)

    def eps_from_v(self, u: State, t: Time, v: Noise) -> Noise:
        return self.process.eps_from_v(u, t, v)

    def v_from_eps(self, u: State, t: Time, eps: Noise) -> Noise:
        return self.process.v_from_eps(u, t, eps)

    def gamma(self, u: State, t: Time) -> Gamma:
        return self.process.gamma(u, t)

    def ancestral_mean(self, u: State, t: Time, s: Time, eps_hat: Noise) -> Noise:
        return self.process.ancestral_mean(u, t, s, eps_hat)

    def posterior_noise(self, u: State, t: Time, s: Time, xi: Noise) -> Noise:
        return self.process.posterior_noise(u, t, s, xi)

    def transition_noise(self, u: State, t: Time, s: Time, xi: Noise) -> Noise:
        return self.process.transition_noise(u, t, s, xi)
