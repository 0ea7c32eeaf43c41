"""PTQ methods, one file each, behind one interface (:class:`~.base.Calibrator`): :mod:`.repq` (RepQ-ViT, the
default), :mod:`.dopq` (DopQ-ViT's median scale on RepQ-ViT), :mod:`.ptq4vit` (twin uniform), :mod:`.minmax`
and :mod:`.percentile` (the baselines). ``PTQConfig.method`` names one; :func:`calibrator_for` returns it."""

# import order = registration order = the order PTQConfig.method's choices are listed in (the default first)
# isort: off
from . import repq
from . import dopq
from . import ptq4vit
from . import minmax
from . import percentile

# isort: on
from .base import (
    CALIBRATORS,
    POST_GELU_QUANTIZERS,
    SOFTMAX_QUANTIZERS,
    Calibration,
    Calibrator,
    calibrator_for,
    register_calibrator,
)

#: names ``PTQConfig.method`` accepts
METHODS = tuple(CALIBRATORS)

__all__ = [
    "CALIBRATORS",
    "METHODS",
    "POST_GELU_QUANTIZERS",
    "SOFTMAX_QUANTIZERS",
    "Calibration",
    "Calibrator",
    "calibrator_for",
    "dopq",
    "minmax",
    "percentile",
    "ptq4vit",
    "register_calibrator",
    "repq",
]
