from ._base import AbstractProcess as AbstractProcess
from ._mulan import (
    LatentDenoiser as LatentDenoiser,
    LatentPrior as LatentPrior,
    MuLAN as MuLAN,
)
from ._nonisotropic import NonIsotropicVP as NonIsotropicVP
from ._ve import NonIsotropicVE as NonIsotropicVE
from ._vp import (
    VP as VP,
    AbstractVPProcess as AbstractVPProcess,
    DiagonalVP as DiagonalVP,
    require_vp as require_vp,
)
