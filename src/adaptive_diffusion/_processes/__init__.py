from ._base import (
    AbstractDataStateProcess as AbstractDataStateProcess,
    AbstractLinearGaussianProcess as AbstractLinearGaussianProcess,
    AbstractLinearProcess as AbstractLinearProcess,
    AbstractProcess as AbstractProcess,
    AbstractSDEProcess as AbstractSDEProcess,
    CapabilityError as CapabilityError,
    InitialState as InitialState,
    require_capability as require_capability,
)
from ._ddpm import DDPM as DDPM, cosine_betas as cosine_betas, linear_betas as linear_betas
from ._latent_diffusion import Codec as Codec, LatentDiffusion as LatentDiffusion
from ._mdm import (
    ALDA as ALDA,
    CLD as CLD,
    MALDA as MALDA,
    AbstractLinearMDM as AbstractLinearMDM,
    LearnedMDM as LearnedMDM,
    LinearMDM as LinearMDM,
    StackedDenoiser as StackedDenoiser,
    time_min_for_gamma as time_min_for_gamma,
)
from ._mulan import (
    LatentDenoiser as LatentDenoiser,
    LatentPrior as LatentPrior,
    LatentState as LatentState,
    MuLAN as MuLAN,
)
from ._nonisotropic import NonIsotropicVE as NonIsotropicVE, NonIsotropicVP as NonIsotropicVP
from ._vp import (
    VP as VP,
    AbstractScaledGaussianProcess as AbstractScaledGaussianProcess,
    AbstractVPProcess as AbstractVPProcess,
    DiagonalVP as DiagonalVP,
)
