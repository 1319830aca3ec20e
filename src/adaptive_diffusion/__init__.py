"""adaptive-diffusion: diffusion models whose forward noise process is designed or learned."""

from . import nn as nn
from ._covariance import (
    AbstractCovariance as AbstractCovariance,
    AbstractSpectralCovariance as AbstractSpectralCovariance,
    GFFCovariance as GFFCovariance,
    IdentityCovariance as IdentityCovariance,
    LearnedGFFCovariance as LearnedGFFCovariance,
    SpectralCovariance as SpectralCovariance,
)
from ._discrete import (
    bin_centres as bin_centres,
    check_discrete as check_discrete,
    from_levels as from_levels,
    to_levels as to_levels,
)
from ._latents import (
    AbstractLatent as AbstractLatent,
    AbstractPerturbation as AbstractPerturbation,
    CategoricalLatent as CategoricalLatent,
    GaussianLatent as GaussianLatent,
    GumbelPerturbation as GumbelPerturbation,
    NoLatent as NoLatent,
    SumOfGammaPerturbation as SumOfGammaPerturbation,
    TopKLatent as TopKLatent,
)
from ._likelihood import (
    AbstractDequantization as AbstractDequantization,
    AbstractTraceEstimator as AbstractTraceEstimator,
    ExactTrace as ExactTrace,
    HutchinsonTrace as HutchinsonTrace,
    LikelihoodResult as LikelihoodResult,
    ProcessDequantization as ProcessDequantization,
    TruncatedNormalDequantization as TruncatedNormalDequantization,
    UniformDequantization as UniformDequantization,
    dense_vlb as dense_vlb,
    mulan_dense_vlb as mulan_dense_vlb,
    mulan_ode_bits_per_dim as mulan_ode_bits_per_dim,
    ode_bits_per_dim as ode_bits_per_dim,
    ode_log_likelihood as ode_log_likelihood,
)
from ._losses import (
    NELBO as NELBO,
    AbstractTimeSampler as AbstractTimeSampler,
    AntitheticTimes as AntitheticTimes,
    ArcLengthTimes as ArcLengthTimes,
    UniformTimes as UniformTimes,
    antithetic_times as antithetic_times,
    batch_bound as batch_bound,
    batch_nelbo as batch_nelbo,
    mulan_batch_nelbo as mulan_batch_nelbo,
    mulan_nelbo as mulan_nelbo,
    nelbo as nelbo,
)
from ._parameterizations import (
    AbstractParameterization as AbstractParameterization,
    DataPrediction as DataPrediction,
    EpsilonAsVelocity as EpsilonAsVelocity,
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
    LatentDenoiser as LatentDenoiser,
    LatentPrior as LatentPrior,
    MuLAN as MuLAN,
    NonIsotropicVE as NonIsotropicVE,
    NonIsotropicVP as NonIsotropicVP,
)
from ._sampling import (
    mulan_sample as mulan_sample,
    sample_ancestral as sample_ancestral,
    sample_annealed_langevin as sample_annealed_langevin,
    sample_ddim as sample_ddim,
    sample_ode as sample_ode,
    sample_sde as sample_sde,
)
from ._schedules import (
    AbstractLatentSchedule as AbstractLatentSchedule,
    AbstractSchedule as AbstractSchedule,
    BetaSchedule as BetaSchedule,
    CosineSchedule as CosineSchedule,
    FixedLatentSchedule as FixedLatentSchedule,
    LearnedSchedule as LearnedSchedule,
    LinearSchedule as LinearSchedule,
    MonotoneNetSchedule as MonotoneNetSchedule,
    MonotoneScheduleNetwork as MonotoneScheduleNetwork,
    PolynomialSchedule as PolynomialSchedule,
    PolynomialScheduleNetwork as PolynomialScheduleNetwork,
    alpha_sigma as alpha_sigma,
    gamma_and_derivative as gamma_and_derivative,
)
