from ._base import AbstractProcess as AbstractProcess
from ._vp import (
    VP as VP,
    AbstractVPProcess as AbstractVPProcess,
    DiagonalVP as DiagonalVP,
    require_vp as require_vp,
)
