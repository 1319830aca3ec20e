r"""What a denoising network predicts, as small objects rather than branches.

A parameterisation turns a network output at $(u_t, t)$ into the white-noise prediction
$\hat\varepsilon$ used by the bound, and into the score used by the likelihood and the
samplers, through the process's own conversions:

- `EpsilonPrediction`: the output is $\hat\varepsilon$ (DDPM, VDM).
- `DataPrediction`: the output is $\hat x_0$;
  $\hat\varepsilon = \Sigma^{-1/2}(u_t - \alpha_t \hat x_0)/\sigma_t$.
- `VelocityPrediction`: the output is $\hat v$ with $v = \alpha_t\varepsilon - \sigma_t x_0$
  (Salimans & Ho 2022); $\hat\varepsilon = \sigma_t u_t + \alpha_t \hat v$.
- `ScorePrediction`: the output is the score $\nabla \log p_t(u_t)$.
- `EpsilonAsVelocity`: an $\varepsilon$-trained network read through the velocity
  conversion (MuLAN's ImageNet evaluation).
"""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from ._custom_types import State, Time
from ._processes import AbstractProcess, require_vp


class AbstractParameterization(eqx.Module):
    """How to read a network's output."""

    @abc.abstractmethod
    def to_eps(self, process: AbstractProcess, output: State, u: State, t: Time) -> State:
        r"""The white-noise prediction $\hat\varepsilon$ implied by `output`."""

    @abc.abstractmethod
    def to_score(self, process: AbstractProcess, output: State, u: State, t: Time) -> State:
        r"""The score $\nabla_u \log p_t(u)$ implied by `output`."""


class EpsilonPrediction(AbstractParameterization):
    r"""The network predicts the white noise $\varepsilon$."""

    def to_eps(self, process: AbstractProcess, output: State, u: State, t: Time) -> State:
        return output

    def to_score(self, process: AbstractProcess, output: State, u: State, t: Time) -> State:
        return process.score_from_eps(u, t, output)


class DataPrediction(AbstractParameterization):
    r"""The network predicts the clean data $x_0$."""

    def to_eps(self, process: AbstractProcess, output: State, u: State, t: Time) -> State:
        return require_vp(
            process, "DataPrediction", "EpsilonPrediction or ScorePrediction"
        ).eps_from_x0(u, t, output)

    def to_score(self, process: AbstractProcess, output: State, u: State, t: Time) -> State:
        return process.score_from_eps(u, t, self.to_eps(process, output, u, t))


class VelocityPrediction(AbstractParameterization):
    r"""The network predicts the velocity $v = \alpha_t \varepsilon - \sigma_t x_0$."""

    def to_eps(self, process: AbstractProcess, output: State, u: State, t: Time) -> State:
        return require_vp(
            process, "VelocityPrediction", "EpsilonPrediction or ScorePrediction"
        ).eps_from_v(u, t, output)

    def to_score(self, process: AbstractProcess, output: State, u: State, t: Time) -> State:
        return process.score_from_eps(u, t, self.to_eps(process, output, u, t))


class EpsilonAsVelocity(AbstractParameterization):
    r"""A network trained to predict $\varepsilon$, read as a velocity prediction.

    $\hat v = (\hat\varepsilon - \sigma_t y_t)/\alpha_t = e^{\operatorname{softplus}
    (\gamma)/2}\,\hat\varepsilon - e^{\gamma/2} y_t$ ($y_t = \Sigma^{-1/2} u_t$, and
    $1/\alpha = \sqrt{1 + e^\gamma}$, $\sigma/\alpha = e^{\gamma/2}$), then read through
    `VelocityPrediction`: the conversion the MuLAN reference applies to its
    $\varepsilon$-trained ImageNet model (`velocity_from_epsilon`) to evaluate it with
    its velocity code. Mathematically the identity on $\hat\varepsilon$; here the score
    always passes through $\hat\varepsilon$, so the numbers agree with
    `EpsilonPrediction` to float32 rounding.
    """

    def to_eps(self, process: AbstractProcess, output: State, u: State, t: Time) -> State:
        vp = require_vp(process, "EpsilonAsVelocity", "EpsilonPrediction")
        gamma = vp.gamma(t, u)
        white = vp.covariance.inv_sqrt_apply(u)
        velocity = jnp.exp(0.5 * jax.nn.softplus(gamma)) * output - jnp.exp(0.5 * gamma) * white
        return VelocityPrediction().to_eps(process, velocity, u, t)

    def to_score(self, process: AbstractProcess, output: State, u: State, t: Time) -> State:
        return process.score_from_eps(u, t, self.to_eps(process, output, u, t))


class ScorePrediction(AbstractParameterization):
    r"""The network predicts the score $\nabla_u \log p_t(u)$ directly."""

    def to_eps(self, process: AbstractProcess, output: State, u: State, t: Time) -> State:
        return process.eps_from_score(u, t, output)

    def to_score(self, process: AbstractProcess, output: State, u: State, t: Time) -> State:
        return output


_BY_NAME: dict[str, AbstractParameterization] = {
    "eps": EpsilonPrediction(),
    "x": DataPrediction(),
    "v": VelocityPrediction(),
    "score": ScorePrediction(),
}


def as_parameterization(
    parameterization: str | AbstractParameterization,
) -> AbstractParameterization:
    """Look up `"eps"`, `"x"`, `"v"` or `"score"`, or pass an object through."""
    if isinstance(parameterization, AbstractParameterization):
        return parameterization
    try:
        return _BY_NAME[parameterization]
    except KeyError:
        raise ValueError(
            f"Unknown parameterization {parameterization!r}; use one of {sorted(_BY_NAME)} "
            "or an AbstractParameterization instance."
        ) from None


class ModelScore(eqx.Module):
    r"""A network read as a score function, `score(u, t)` $= \nabla_u \log p_t(u)$.

    An `eqx.Module`, so the network's parameters stay visible to `jit` and `grad`.
    """

    process: AbstractProcess
    model: Callable[[State, Time], State]
    parameterization: AbstractParameterization

    def __call__(self, u: State, t: Time) -> State:
        return self.parameterization.to_score(self.process, self.model(u, t), u, t)


def score_fn(
    process: AbstractProcess,
    model: Callable[[State, Time], State],
    parameterization: str | AbstractParameterization = "eps",
) -> ModelScore:
    """Wrap a network `model(u_t, t)` as a score function for the likelihood and samplers.

    **Arguments:**

    - `process`: the forward process the network was trained on.
    - `model`: the network, called per example as `model(u_t, t)`.
    - `parameterization`: what `model` predicts: `"eps"`, `"x"`, `"v"`, `"score"`, or an
      `AbstractParameterization`.

    **Returns:** a callable module `score(u, t)`.
    """
    return ModelScore(process, model, as_parameterization(parameterization))
