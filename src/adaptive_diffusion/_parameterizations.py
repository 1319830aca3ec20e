r"""What a denoising network predicts, as small objects rather than branches.

A parameterisation turns a network output at $(u_t, t)$ into the white-noise prediction
$\hat\varepsilon$ used by the bound, and into the score and the probability-flow drift
used by the likelihood and the samplers, through the process's own conversions (methods
of `AbstractLinearProcess`, so every parameterisation works for every process that has
them; the score needs a Gaussian process):

- `EpsilonPrediction`: the output is $\hat\varepsilon$ (DDPM, VDM).
- `DataPrediction`: the output is the clean $\hat u_0$;
  $\hat\varepsilon = L_t^{-1}(u_t - A_t \hat u_0)$.
- `VelocityPrediction`: the output is $\hat v$ with $v = \alpha_t\varepsilon - \sigma_t x_0$
  (Salimans & Ho 2022); $\hat\varepsilon = \sigma_t u_t + \alpha_t \hat v$ (see
  `eps_from_v` of the process).
- `ScorePrediction`: the output is the score $\nabla \log p_t(u_t)$.
- `EpsilonAsVelocity`: an $\varepsilon$-trained network read through the velocity
  conversion (MuLAN's ImageNet evaluation).
"""

import abc
from collections.abc import Callable

import equinox as eqx

from ._custom_types import Noise, State, Time
from ._processes import (
    AbstractLinearGaussianProcess,
    AbstractLinearProcess,
    AbstractSDEProcess,
    require_capability,
)


class AbstractParameterization(eqx.Module):
    """How to read a network's output."""

    @abc.abstractmethod
    def to_eps(self, process: AbstractLinearProcess, output: Noise, u: State, t: Time) -> Noise:
        r"""The white-noise prediction $\hat\varepsilon$ implied by `output`."""

    def to_score(self, process: AbstractLinearProcess, output: Noise, u: State, t: Time) -> Noise:
        r"""The score $\nabla_u \log p_t(u) = -L_t^{-\top}\hat\varepsilon$ implied by
        `output`, through $\hat\varepsilon$ (for `ScorePrediction` a round trip that is the
        identity to float32 rounding). Needs a Gaussian process."""
        process = require_capability(process, AbstractLinearGaussianProcess, "The score")
        return process.score_from_eps(u, t, self.to_eps(process, output, u, t))

    def to_flow(self, process: AbstractSDEProcess, output: Noise, u: State, t: Time) -> Noise:
        r"""The probability-flow drift implied by `output`, through $\hat\varepsilon$ and the
        process's `probability_flow_eps` (its cheapest route)."""
        return process.probability_flow_eps(u, t, self.to_eps(process, output, u, t))


class EpsilonPrediction(AbstractParameterization):
    r"""The network predicts the white noise $\varepsilon$."""

    def to_eps(self, process: AbstractLinearProcess, output: Noise, u: State, t: Time) -> Noise:
        return output


class DataPrediction(AbstractParameterization):
    r"""The network predicts the clean diffused part $\hat u_0$ (the data, for most
    processes)."""

    def to_eps(self, process: AbstractLinearProcess, output: Noise, u: State, t: Time) -> Noise:
        return process.eps_from_x0(u, t, output)


class VelocityPrediction(AbstractParameterization):
    r"""The network predicts the velocity $v = \alpha_t \varepsilon - \sigma_t x_0$."""

    def to_eps(self, process: AbstractLinearProcess, output: Noise, u: State, t: Time) -> Noise:
        return process.eps_from_v(u, t, output)


class EpsilonAsVelocity(AbstractParameterization):
    r"""A network trained to predict $\varepsilon$, read as a velocity prediction.

    $\hat v$ = `process.v_from_eps(u, t, output)`, then read through
    `VelocityPrediction`: the conversion the MuLAN reference applies to its
    $\varepsilon$-trained ImageNet model (`velocity_from_epsilon`) to evaluate it with its
    velocity code. Mathematically the identity on $\hat\varepsilon$; here the score
    always passes through $\hat\varepsilon$, so the numbers agree with
    `EpsilonPrediction` to float32 rounding.
    """

    def to_eps(self, process: AbstractLinearProcess, output: Noise, u: State, t: Time) -> Noise:
        return process.eps_from_v(u, t, process.v_from_eps(u, t, output))


class ScorePrediction(AbstractParameterization):
    r"""The network predicts the score $\nabla_u \log p_t(u)$ directly."""

    def to_eps(self, process: AbstractLinearProcess, output: Noise, u: State, t: Time) -> Noise:
        process = require_capability(process, AbstractLinearGaussianProcess, "A score network")
        return process.eps_from_score(u, t, output)


_BY_NAME: dict[str, AbstractParameterization] = {
    "eps": EpsilonPrediction(),
    "x": DataPrediction(),
    "v": VelocityPrediction(),
    "score": ScorePrediction(),
}


def as_parameterization(
    parameterization: str | AbstractParameterization,
) -> AbstractParameterization:
    """Look up the contract's shorthands `"eps"`, `"x"`, `"v"` or `"score"`, or pass an
    object through."""
    if isinstance(parameterization, AbstractParameterization):
        return parameterization
    try:
        return _BY_NAME[parameterization]
    except KeyError:
        raise ValueError(
            f"Unknown parameterization {parameterization!r}; use one of {sorted(_BY_NAME)} "
            "or an AbstractParameterization instance."
        ) from None


class AbstractScore(eqx.Module):
    r"""A score function $s(u, t) \approx \nabla_u \log p_t(u)$ of the diffused part, with
    the white-noise prediction and the probability-flow drift it implies for a process
    (which the samplers and the likelihood ask for directly, saving conversions)."""

    @abc.abstractmethod
    def __call__(self, u: State, t: Time) -> Noise:
        """The score at `(u, t)`."""

    @abc.abstractmethod
    def eps(self, process: AbstractLinearProcess, u: State, t: Time) -> Noise:
        r"""The white-noise prediction $\hat\varepsilon = -L_t^\top s(u, t)$."""

    @abc.abstractmethod
    def probability_flow(self, process: AbstractSDEProcess, u: State, t: Time) -> Noise:
        r"""$f(u, t) - \tfrac12 G G^\top s(u, t)$, by the cheapest route available."""


class CallableScore(AbstractScore):
    """Any callable `score(u, t)` (an analytic score, say), as an `AbstractScore`."""

    fn: Callable[[State, Time], Noise]

    def __call__(self, u: State, t: Time) -> Noise:
        return self.fn(u, t)

    def eps(self, process: AbstractLinearProcess, u: State, t: Time) -> Noise:
        process = require_capability(process, AbstractLinearGaussianProcess, "A score function")
        return process.eps_from_score(u, t, self.fn(u, t))

    def probability_flow(self, process: AbstractSDEProcess, u: State, t: Time) -> Noise:
        return process.probability_flow(u, t, self.fn(u, t))


class ModelScore(AbstractScore):
    r"""A network read as a score function, `score(u, t)` $= \nabla_u \log p_t(u)$.

    An `eqx.Module`, so the network's parameters stay visible to `jit` and `grad`. Its
    probability-flow drift goes through the parameterisation's `to_flow`: for an
    $\varepsilon$-network on a non-isotropic process, one application of $\Sigma^{1/2}$
    per evaluation instead of three.
    """

    process: AbstractLinearProcess
    model: Callable[[State, Time], Noise]
    parameterization: AbstractParameterization

    def __call__(self, u: State, t: Time) -> Noise:
        return self.parameterization.to_score(self.process, self.model(u, t), u, t)

    def eps(self, process: AbstractLinearProcess, u: State, t: Time) -> Noise:
        return self.parameterization.to_eps(process, self.model(u, t), u, t)

    def probability_flow(self, process: AbstractSDEProcess, u: State, t: Time) -> Noise:
        return self.parameterization.to_flow(process, self.model(u, t), u, t)


def as_score(score: Callable[[State, Time], Noise]) -> AbstractScore:
    """An `AbstractScore` as it is; any other callable wrapped in `CallableScore`."""
    return score if isinstance(score, AbstractScore) else CallableScore(score)


def score_fn(
    process: AbstractLinearProcess,
    model: Callable[[State, Time], Noise],
    parameterization: str | AbstractParameterization = "eps",
) -> ModelScore:
    """Wrap a network `model(u_t, t)` as a score function for the likelihood and samplers.

    **Arguments:**

    - `process`: the forward process the network was trained on.
    - `model`: the network, called per example as `model(u_t, t)` (for a process whose
      state is not the data, an array network adapted by `process.denoiser(net)`).
    - `parameterization`: what `model` predicts: `"eps"`, `"x"`, `"v"`, `"score"`, or an
      `AbstractParameterization`.

    **Returns:** a callable module `score(u, t)`.
    """
    return ModelScore(process, model, as_parameterization(parameterization))
