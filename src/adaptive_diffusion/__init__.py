"""adaptive-diffusion: diffusion models whose forward noise process is designed or learned."""

from . import nn as nn
from ._covariance import (
    AbstractCovariance as AbstractCovariance,
    IdentityCovariance as IdentityCovariance,
)
from ._discrete import (
    bin_centres as bin_centres,
    check_discrete as check_discrete,
    from_levels as from_levels,
    to_levels as to_levels,
)
from ._likelihood import (
    AbstractDequantization as AbstractDequantization,
    AbstractTraceEstimator as AbstractTraceEstimator,
    ExactTrace as ExactTrace,
    HutchinsonTrace as HutchinsonTrace,
    LikelihoodResult as LikelihoodResult,
    ProcessDequantization as ProcessDequantization,
    UniformDequantization as UniformDequantization,
    dense_vlb as dense_vlb,
    ode_bits_per_dim as ode_bits_per_dim,
    ode_log_likelihood as ode_log_likelihood,
)
from ._losses import (
    NELBO as NELBO,
    antithetic_times as antithetic_times,
    batch_nelbo as batch_nelbo,
    nelbo as nelbo,
)
from ._parameterizations import (
    AbstractParameterization as AbstractParameterization,
    DataPrediction as DataPrediction,
    EpsilonPrediction as EpsilonPrediction,
    ModelScore as ModelScore,
    ScorePrediction as ScorePrediction,
    VelocityPrediction as VelocityPrediction,
    score_fn as score_fn,
)
from ._processes import (
    VP as VP,
    AbstractProcess as AbstractProcess,
    AbstractVPProcess as AbstractVPProcess,
    DiagonalVP as DiagonalVP,
)
from ._sampling import (
    sample_ancestral as sample_ancestral,
    sample_ddim as sample_ddim,
    sample_ode as sample_ode,
    sample_sde as sample_sde,
)
from ._schedules import (
    AbstractSchedule as AbstractSchedule,
    CosineSchedule as CosineSchedule,
    LearnedSchedule as LearnedSchedule,
    LinearSchedule as LinearSchedule,
    alpha_sigma as alpha_sigma,
    gamma_and_derivative as gamma_and_derivative,
)
