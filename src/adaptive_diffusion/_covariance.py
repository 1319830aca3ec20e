r"""Noise covariances $\Sigma$ as linear operators on one example.

A covariance never forms a dense matrix outside `as_matrix` (for small shapes and
tests): processes only apply $\Sigma^{1/2}$, $\Sigma^{-1/2}$ and read
$\log\det\Sigma$ and the marginal variances $\operatorname{diag}\Sigma$.

Spectral covariances (Voleti, Oberman & Pal 2022, eqs. 26-27) are diagonal in the 2-D
discrete Fourier basis of each channel: with $F$ the 2-D DFT of an $H \times W$ image
and a power spectrum $s(k) > 0$,
$$\Sigma = F^{-1} \operatorname{diag}(s) F, \qquad
\Sigma^{\pm 1/2} = F^{-1} \operatorname{diag}(s^{\pm 1/2}) F, \qquad
\log\det\Sigma = \sum_{c, k} \log s_c(k),$$
applied by FFT in $O(N \log N)$ time and $O(N)$ memory. $\Sigma$ is circulant
(translation invariant, periodic boundaries) and real because $s(k) = s(-k)$; its
eigenvalues are the $s(k)$ and every diagonal entry is $\tfrac1{HW} \sum_k s(k)$, so
dividing $s$ by its mean gives unit mean marginal variance.
"""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._custom_types import Data


class AbstractCovariance(eqx.Module):
    r"""A symmetric positive-definite covariance $\Sigma$ over data of one shape."""

    @abc.abstractmethod
    def sqrt_apply(self, x: Data) -> Data:
        r"""$\Sigma^{1/2} x$, with $\Sigma^{1/2}$ the symmetric square root."""

    @abc.abstractmethod
    def inv_sqrt_apply(self, x: Data) -> Data:
        r"""$\Sigma^{-1/2} x$."""

    @abc.abstractmethod
    def logdet(self) -> Float[Array, ""]:
        r"""$\log \det \Sigma$, in nats."""

    @abc.abstractmethod
    def variance(self) -> Float[Array, "..."]:
        r"""The marginal variances $\operatorname{diag} \Sigma$, broadcastable to the data."""

    @abc.abstractmethod
    def as_matrix(self) -> Float[Array, "n n"]:
        r"""$\Sigma$ as a dense `(N, N)` matrix over the flattened data (small shapes only)."""


class IdentityCovariance(AbstractCovariance):
    r"""$\Sigma = I$: white noise, the covariance of `VP` and `DiagonalVP`.

    **Arguments:** `shape`: the data shape; needed only by `as_matrix`.
    """

    shape: tuple[int, ...] | None = eqx.field(default=None, static=True)

    def sqrt_apply(self, x: Data) -> Data:
        return x

    def inv_sqrt_apply(self, x: Data) -> Data:
        return x

    def logdet(self) -> Float[Array, ""]:
        return jnp.zeros(())

    def variance(self) -> Float[Array, ""]:
        return jnp.ones(())

    def as_matrix(self) -> Float[Array, "n n"]:
        if self.shape is None:
            raise ValueError(
                "IdentityCovariance.as_matrix needs the data shape: build it as "
                "IdentityCovariance(shape=x.shape)."
            )
        return jnp.eye(math.prod(self.shape))


def _image_shape(name: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"{name} needs the data shape (C, H, W) of one image, got shape={shape}; "
            "reshape vector data to (1, 1, D) or (1, H, W)."
        )
    c, h, w = (int(d) for d in shape)
    return c, h, w


def _reflect(s: Float[Array, "*c h w"]) -> Float[Array, "*c h w"]:
    r"""$s(-k \bmod N)$ on the DFT grid of the last two axes."""
    return jnp.roll(jnp.flip(s, axis=(-2, -1)), 1, axis=(-2, -1))


def _dft_matrix(n: int) -> Array:
    j = jnp.arange(n)
    return jnp.exp(-2j * jnp.pi * jnp.outer(j, j) / n)


class AbstractSpectralCovariance(AbstractCovariance):
    r"""$\Sigma = F^{-1} \operatorname{diag}(s) F$ per channel, applied by FFT.

    Subclasses give the log power spectrum up to an additive constant
    (`log_power_spectrum`); it is normalised here to unit mean marginal variance,
    $s = \tilde s / \operatorname{mean}(\tilde s)$ (through `logsumexp`, so steep
    spectra do not overflow). It must be symmetric, $\tilde s(k) = \tilde s(-k \bmod N)$,
    which makes $\Sigma$ and $\Sigma^{\pm1/2}$ real: they are then applied with `rfft2` /
    `irfft2` over the last two axes, which is exact for such spectra.
    """

    shape: eqx.AbstractVar[tuple[int, int, int]]

    @abc.abstractmethod
    def log_power_spectrum(self) -> Float[Array, "*c h w"]:
        r"""$\log \tilde s(k)$ on the `(H, W)` DFT grid (`jnp.fft.fftfreq` order), one
        spectrum for every channel, or `(C, H, W)` for one per channel; any additive
        constant."""

    def log_spectrum(self) -> Float[Array, "c h w"]:
        r"""$\log s_c(k)$ after normalisation to unit mean marginal variance, shape `(C, H, W)`."""
        log_s = self.log_power_spectrum()
        log_s = log_s - (jax.nn.logsumexp(log_s) - math.log(log_s.size))
        return jnp.broadcast_to(log_s, self.shape)

    def _check_shape(self, x: Data):
        if x.shape != self.shape:
            raise ValueError(
                f"{type(self).__name__} was built for data of shape {self.shape}, but got "
                f"an array of shape {x.shape}; build the covariance with shape=x.shape."
            )

    def _spectral_multiply(self, x: Data, log_multiplier: Float[Array, "c h w"]) -> Data:
        self._check_shape(x)
        half = log_multiplier[..., : self.shape[-1] // 2 + 1]
        return jnp.fft.irfft2(jnp.fft.rfft2(x) * jnp.exp(half), s=self.shape[-2:]).astype(x.dtype)

    def sqrt_apply(self, x: Data) -> Data:
        return self._spectral_multiply(x, 0.5 * self.log_spectrum())

    def inv_sqrt_apply(self, x: Data) -> Data:
        return self._spectral_multiply(x, -0.5 * self.log_spectrum())

    def logdet(self) -> Float[Array, ""]:
        return jnp.sum(self.log_spectrum())

    def variance(self) -> Float[Array, "c 1 1"]:
        r"""Per channel $\tfrac1{HW}\sum_k s_c(k)$ (every pixel of a channel alike); exactly
        1 when all channels share one spectrum."""
        return jnp.mean(jnp.exp(self.log_spectrum()), axis=(-2, -1), keepdims=True)

    def as_matrix(self) -> Float[Array, "n n"]:
        r"""The dense $\Sigma$, built from explicit DFT matrices rather than by FFT (so it
        checks the FFT path); $O(N^2)$ memory."""
        c, h, w = self.shape
        dft = jnp.kron(_dft_matrix(h), _dft_matrix(w))
        spectrum = jnp.exp(self.log_spectrum()).reshape(c, h * w)
        blocks = [jnp.real(dft.conj().T @ (spectrum[i][:, None] * dft)) / (h * w) for i in range(c)]
        return jax.scipy.linalg.block_diag(*blocks)


class SpectralCovariance(AbstractSpectralCovariance):
    r"""A spectral covariance with any positive, symmetric power spectrum.

    **Arguments:**

    - `shape`: the data shape `(C, H, W)`.
    - `spectrum`: $\tilde s(k) > 0$ on the `(H, W)` DFT grid in `jnp.fft.fftfreq` order (or
      `(C, H, W)`, one per channel), symmetric under $k \to -k \bmod N$; any positive
      scale (it is normalised to unit mean marginal variance). A spectrum that is not
      positive, finite and symmetric raises an error, also under `jit`.
    """

    shape: tuple[int, int, int] = eqx.field(static=True)
    spectrum: Float[Array, "*c h w"]

    def __init__(self, shape: tuple[int, ...], spectrum: Float[ArrayLike, "*c h w"]):
        self.shape = _image_shape(type(self).__name__, shape)
        s = jnp.asarray(spectrum, dtype=jnp.result_type(float))
        if s.shape not in (self.shape[1:], self.shape):
            raise ValueError(
                f"SpectralCovariance for data of shape {self.shape} needs a spectrum of "
                f"shape {self.shape[1:]} or {self.shape}, got {s.shape}."
            )
        s = eqx.error_if(
            s,
            ~jnp.all(jnp.isfinite(s) & (s > 0)),
            "SpectralCovariance needs a positive, finite spectrum: every s(k) > 0 (a zero "
            "makes Sigma singular); regularise zeros, e.g. at k = 0.",
        )
        self.spectrum = eqx.error_if(
            s,
            ~jnp.allclose(s, _reflect(s), rtol=1e-5, atol=0.0),
            "SpectralCovariance needs a spectrum symmetric under k -> -k (mod N), else "
            "Sigma is not real; symmetrise it as (s + s[..., -k]) / 2.",
        )

    def log_power_spectrum(self) -> Float[Array, "*c h w"]:
        return jnp.log(self.spectrum)


def _log_gff_spectrum(
    shape: tuple[int, int, int], power: Float[ArrayLike, ""], log_dc_weight: Float[ArrayLike, ""]
) -> Float[Array, "h w"]:
    r"""$\log \tilde s$ of `GFFCovariance`: $-2p \log|k|$, and at $k = 0$ the value at the
    lowest nonzero frequency plus $\log w_{\mathrm{DC}}$."""
    _, h, w = shape
    ky, kx = jnp.meshgrid(jnp.fft.fftfreq(h), jnp.fft.fftfreq(w), indexing="ij")
    radius = jnp.sqrt(ky**2 + kx**2)
    lowest = 1.0 / max(h, w)
    is_dc = radius == 0
    log_s = -2.0 * power * jnp.log(jnp.where(is_dc, lowest, radius))
    return jnp.where(is_dc, log_s + log_dc_weight, log_s)


class GFFCovariance(AbstractSpectralCovariance):
    r"""The Gaussian-free-field covariance of NI-DDPM (Voleti et al. 2022, eqs. 26-27).

    Per channel $\Sigma = F^{-1} \operatorname{diag}(s) F$ with
    $s(k) \propto \lvert k\rvert^{-2p}$ for $k \ne 0$, $\lvert k\rvert$ in cycles per pixel
    (so the field is isotropic in pixel space also for $H \ne W$), normalised to unit
    marginal variance at every pixel. `power` $p = 1$ is the paper's amplitude window
    $K^{-1} = 1/\lvert k\rvert$: smooth, spatially correlated noise whose low
    frequencies carry most of the power; $p = 0$ is white noise.

    **The DC term.** $\lvert k\rvert^{-2p}$ is infinite at $k = 0$. The DC mode is the
    channel's image mean: too large a weight makes the mean carry almost all of the
    noise (after normalisation the other modes are barely noised, and the diffusion
    stops destroying structure), while zero makes $\Sigma$ singular (the mean is never
    noised; $\Sigma^{-1/2}$, $\log\det\Sigma$ and the likelihood do not exist). Here
    $s(0) = w_{\mathrm{DC}}\, s(k_{\min})$, the value at the lowest nonzero frequency
    $k_{\min} = 1/\max(H, W)$ times `dc_weight`: with the default 1 the spectrum is
    continued flat below the lowest frequency the image resolves, so the mean gets as much
    power as the largest-scale fluctuation, between the two failure modes.

    **Arguments:**

    - `shape`: the data shape `(C, H, W)`.
    - `power`: the exponent $p$ of $s(k) \propto \lvert k\rvert^{-2p}$.
    - `dc_weight`: $w_{\mathrm{DC}} > 0$.
    """

    shape: tuple[int, int, int] = eqx.field(static=True)
    power: float
    dc_weight: float

    def __init__(self, shape: tuple[int, ...], power: float = 1.0, dc_weight: float = 1.0):
        self.shape = _image_shape(type(self).__name__, shape)
        if not dc_weight > 0:
            raise ValueError(
                f"GFFCovariance needs dc_weight > 0 (zero makes Sigma singular), got {dc_weight}."
            )
        self.power = power
        self.dc_weight = dc_weight

    def log_power_spectrum(self) -> Float[Array, "h w"]:
        return _log_gff_spectrum(self.shape, self.power, jnp.log(self.dc_weight))


class LearnedGFFCovariance(AbstractSpectralCovariance):
    r"""A Gaussian free field whose power and DC weight are parameters, fitted with the
    rest of the model by maximising the ELBO (as MuLAN learns its noise schedule).

    The spectrum is that of `GFFCovariance`, $s(k) \propto \lvert k\rvert^{-2p}$ with
    $s(0) = w_{\mathrm{DC}}\, s(k_{\min})$, normalised to unit marginal variance; the
    parameters are arrays, so `eqx.filter_grad` trains them: `power` $p$ is any real
    (negative powers give blue noise) and $w_{\mathrm{DC}} = e^{\ell}$ stays positive.
    The bound depends on $\Sigma$ through the prior KL, the decoder and the denoiser's
    white-noise targets $\Sigma^{-1/2}(x_t - \alpha_t x_0)/\sigma_t$.

    What the bound prefers is not the data's covariance in general. Since
    $q(z_0 \mid x) = \mathcal N(\alpha_0 x, \sigma_0^2\Sigma)$, its entropy carries
    $+\tfrac12\log\det\Sigma$, which cancels the $-\tfrac12\log\det\Sigma$ of any model
    defined in the white coordinates. For the denoiser that is optimal for Gaussian data
    $\mathcal N(0, c\Sigma)$ the bound then depends on $\Sigma$ only through
    $x^\top\Sigma^{-1}x$, and under the unit-mean normalisation its minimiser is
    $s \propto \sqrt{s_{\mathrm{data}}}$: half the data's power, not the data's
    (`tests/test_covariance.py` checks this). With a flexible, jointly trained denoiser
    the optimum is whatever covariance the network finds easiest to denoise.

    **Arguments:**

    - `shape`: the data shape `(C, H, W)`.
    - `power`: the initial power $p$.
    - `dc_weight`: the initial $w_{\mathrm{DC}} > 0$.
    """

    shape: tuple[int, int, int] = eqx.field(static=True)
    power: Float[Array, ""]
    log_dc_weight: Float[Array, ""]

    def __init__(self, shape: tuple[int, ...], *, power: float = 1.0, dc_weight: float = 1.0):
        self.shape = _image_shape(type(self).__name__, shape)
        if not dc_weight > 0:
            raise ValueError(f"LearnedGFFCovariance needs dc_weight > 0, got {dc_weight}.")
        self.power = jnp.asarray(power, dtype=jnp.result_type(float))
        self.log_dc_weight = jnp.asarray(math.log(dc_weight), dtype=jnp.result_type(float))

    @property
    def dc_weight(self) -> Float[Array, ""]:
        r"""$w_{\mathrm{DC}} = e^{\ell}$."""
        return jnp.exp(self.log_dc_weight)

    def log_power_spectrum(self) -> Float[Array, "h w"]:
        return _log_gff_spectrum(self.shape, self.power, self.log_dc_weight)
