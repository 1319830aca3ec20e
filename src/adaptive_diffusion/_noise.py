r"""Noise families of zero mean and unit variance, for DDPM with non-Gaussian noise.

A family is an `eqx.Module` whose `sample(key, shape)` draws independent values from a
distribution with mean exactly 0 and variance exactly 1 (as distributions; a finite
sample's moments scatter around these), so that
$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1 - \bar\alpha_t}\,n$ has the same first two
moments whatever the family. Each family states its log-density where one exists and
its skewness and excess kurtosis in closed form: the shape of the noise is what differs.

Each family, how it is standardised, and its skewness and excess kurtosis:

- `GaussianNoise`: $\mathcal N(0, 1)$; 0 and 0.
- `LaplaceNoise`: Laplace$(0, 1/\sqrt2)$; 0 and 3.
- `UniformNoise`: $U(-\sqrt3, \sqrt3)$; 0 and $-6/5$.
- `GumbelNoise`: $(G - \gamma_E)\sqrt6/\pi$ for $G \sim$ Gumbel$(0, 1)$;
  $12\sqrt6\,\zeta(3)/\pi^3 \approx 1.1395$ and $12/5$.
- `ExponentialNoise`: $E - 1$ for $E \sim$ Exp$(1)$; 2 and 6.
- `StudentTNoise(df)`: $T\sqrt{(\nu - 2)/\nu}$ for $T \sim t_\nu$, $\nu > 2$; 0 (for
  $\nu > 3$) and $6/(\nu - 4)$ (for $\nu > 4$).
- `GeneralizedGaussianNoise(power)`: density $\propto e^{-\lvert x/a\rvert^p}$; 0 and
  $\Gamma(5/p)\Gamma(1/p)/\Gamma(3/p)^2 - 3$.

The NGLDM reference code leaves its Exponential noise uncentred (mean 1), which biases
every forward marginal by $\sqrt{1 - \bar\alpha_t}$; here it is centred.
"""

import abc
import math

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, DTypeLike, Float, PRNGKeyArray


_ZETA_3 = 1.2020569031595942  # Apery's constant, zeta(3)
_EULER_GAMMA = 0.5772156649015329  # the Euler-Mascheroni constant


class AbstractNoise(eqx.Module):
    """A distribution of mean 0 and variance 1, drawn elementwise."""

    @abc.abstractmethod
    def sample(
        self, key: PRNGKeyArray, shape: tuple[int, ...], dtype: DTypeLike | None = None
    ) -> Float[Array, "*shape"]:
        """Independent draws of the shape `shape` (floating `dtype`, default float)."""

    @abc.abstractmethod
    def log_prob(self, x: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        """The elementwise log-density at `x`, in nats (`-inf` outside the support)."""

    @property
    @abc.abstractmethod
    def skewness(self) -> float:
        r"""$\mathbb E[n^3]$ (the mean is 0 and the variance 1)."""

    @property
    @abc.abstractmethod
    def excess_kurtosis(self) -> float:
        r"""$\mathbb E[n^4] - 3$ (`inf` where the fourth moment does not exist)."""

    @property
    def is_gaussian(self) -> bool:
        """Whether this is the standard normal, the one family for which DDPM's Gaussian
        reverse kernel, and so its variational bound, holds."""
        return False


def _float(dtype: DTypeLike | None):
    return jnp.result_type(float) if dtype is None else dtype


def _inexact(x: ArrayLike) -> Array:
    """`x` as a floating array, keeping a floating input's precision."""
    return jnp.asarray(x, jnp.result_type(x, float))


class GaussianNoise(AbstractNoise):
    r"""The standard normal $\mathcal N(0, 1)$."""

    def sample(self, key, shape, dtype=None):
        return jr.normal(key, shape, _float(dtype))

    def log_prob(self, x):
        x = _inexact(x)
        return -0.5 * (x**2 + math.log(2 * math.pi))

    @property
    def skewness(self) -> float:
        return 0.0

    @property
    def excess_kurtosis(self) -> float:
        return 0.0

    @property
    def is_gaussian(self) -> bool:
        return True


class LaplaceNoise(AbstractNoise):
    r"""Laplace$(0, b)$ with $b = 1/\sqrt2$ (variance $2b^2 = 1$): density
    $e^{-\lvert x\rvert/b} / (2b)$."""

    def sample(self, key, shape, dtype=None):
        return jr.laplace(key, shape, _float(dtype)) * math.sqrt(0.5)

    def log_prob(self, x):
        x = _inexact(x)
        return -jnp.abs(x) * math.sqrt(2.0) - math.log(math.sqrt(2.0))

    @property
    def skewness(self) -> float:
        return 0.0

    @property
    def excess_kurtosis(self) -> float:
        return 3.0


class UniformNoise(AbstractNoise):
    r"""$U(-\sqrt3, \sqrt3)$ (variance $a^2/3 = 1$ for half-width $a = \sqrt3$)."""

    def sample(self, key, shape, dtype=None):
        half = math.sqrt(3.0)
        return jr.uniform(key, shape, _float(dtype), minval=-half, maxval=half)

    def log_prob(self, x):
        x = _inexact(x)
        inside = jnp.abs(x) <= math.sqrt(3.0)
        return jnp.where(inside, -math.log(2 * math.sqrt(3.0)), -jnp.inf)

    @property
    def skewness(self) -> float:
        return 0.0

    @property
    def excess_kurtosis(self) -> float:
        return -1.2


class GumbelNoise(AbstractNoise):
    r"""The standard Gumbel (maximum) distribution, standardised: $n = (G - \gamma_E)/s$
    with $s = \pi/\sqrt6$, since $G \sim$ Gumbel$(0, 1)$ has mean $\gamma_E$ (the
    Euler-Mascheroni constant) and variance $\pi^2/6$. Right-skewed."""

    def sample(self, key, shape, dtype=None):
        scale = math.pi / math.sqrt(6.0)
        return (jr.gumbel(key, shape, _float(dtype)) - _EULER_GAMMA) / scale

    def log_prob(self, x):
        x = _inexact(x)
        scale = math.pi / math.sqrt(6.0)
        g = _EULER_GAMMA + scale * x
        return math.log(scale) - g - jnp.exp(-g)

    @property
    def skewness(self) -> float:
        return 12 * math.sqrt(6.0) * _ZETA_3 / math.pi**3

    @property
    def excess_kurtosis(self) -> float:
        return 2.4


class ExponentialNoise(AbstractNoise):
    r"""Exp$(1)$ centred: $n = E - 1$ on $[-1, \infty)$, density $e^{-(n + 1)}$."""

    def sample(self, key, shape, dtype=None):
        return jr.exponential(key, shape, _float(dtype)) - 1.0

    def log_prob(self, x):
        x = _inexact(x)
        return jnp.where(x >= -1.0, -(x + 1.0), -jnp.inf)

    @property
    def skewness(self) -> float:
        return 2.0

    @property
    def excess_kurtosis(self) -> float:
        return 6.0


class StudentTNoise(AbstractNoise):
    r"""Student's $t_\nu$ scaled to unit variance, $n = T\sqrt{(\nu - 2)/\nu}$: heavy
    tails with one parameter (Pandey et al. 2025's heavy-tailed diffusion), the Gaussian
    as $\nu \to \infty$.

    **Arguments:** `df`: the degrees of freedom $\nu > 2$ (the variance is infinite at
    $\nu \le 2$); the fourth moment exists for $\nu > 4$.
    """

    df: float = 5.0

    def __check_init__(self):
        if not self.df > 2.0:
            raise ValueError(f"StudentTNoise needs df > 2 for a finite variance, got df={self.df}.")

    def _scale(self) -> float:
        return math.sqrt((self.df - 2.0) / self.df)

    def sample(self, key, shape, dtype=None):
        return jr.t(key, self.df, shape, _float(dtype)) * self._scale()

    def log_prob(self, x):
        x = _inexact(x)
        nu, scale = self.df, self._scale()
        log_norm = (
            math.lgamma(0.5 * (nu + 1))
            - math.lgamma(0.5 * nu)
            - 0.5 * math.log(nu * math.pi)
            - math.log(scale)
        )
        return log_norm - 0.5 * (nu + 1) * jnp.log1p((x / scale) ** 2 / nu)

    @property
    def skewness(self) -> float:
        return 0.0 if self.df > 3.0 else math.nan

    @property
    def excess_kurtosis(self) -> float:
        return 6.0 / (self.df - 4.0) if self.df > 4.0 else math.inf


class GeneralizedGaussianNoise(AbstractNoise):
    r"""The generalised Gaussian of shape $p$, density
    $\frac{p}{2a\Gamma(1/p)} e^{-\lvert x/a\rvert^p}$ with
    $a = \sqrt{\Gamma(1/p)/\Gamma(3/p)}$ for unit variance: Laplace at $p = 1$, Gaussian
    at $p = 2$, towards the uniform as $p \to \infty$. Drawn as
    $a\,\mathrm{sign}\cdot G^{1/p}$ with $G \sim \mathrm{Gamma}(1/p)$.

    **Arguments:** `power`: the shape $p > 0$.
    """

    power: float = 1.0

    def __check_init__(self):
        if not self.power > 0.0:
            raise ValueError(f"GeneralizedGaussianNoise needs power > 0, got {self.power}.")

    def _scale(self) -> float:
        return math.exp(0.5 * (math.lgamma(1 / self.power) - math.lgamma(3 / self.power)))

    def sample(self, key, shape, dtype=None):
        dtype = _float(dtype)
        k_sign, k_gamma = jr.split(key)
        radius = jr.gamma(k_gamma, 1 / self.power, shape, dtype) ** (1 / self.power)
        sign = jnp.where(jr.bernoulli(k_sign, 0.5, shape), 1.0, -1.0).astype(dtype)
        return self._scale() * sign * radius

    def log_prob(self, x):
        x = _inexact(x)
        p, a = self.power, self._scale()
        log_norm = math.log(p) - math.log(2 * a) - math.lgamma(1 / p)
        return log_norm - jnp.abs(x / a) ** p

    @property
    def skewness(self) -> float:
        return 0.0

    @property
    def excess_kurtosis(self) -> float:
        p = self.power
        return math.exp(math.lgamma(5 / p) + math.lgamma(1 / p) - 2 * math.lgamma(3 / p)) - 3.0
