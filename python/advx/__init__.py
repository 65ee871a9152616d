"""advx: fast optimization of inputs against neural networks.

Fused C++/CUDA kernels (``advx.ops``) for the hot loops of adversarial attacks,
robustness evaluation and feature visualization, with plain-PyTorch references
(``advx.reference``) that the kernels are tested against.
"""
import torch  # noqa: F401  (loads libtorch before our extension, which has no RUNPATH to it)

from . import _C  # noqa: F401  (registers torch.ops.advx.*)
from . import ops, reference
from . import optim
from .ops.constraints import Box, LpBall
from .prior import EdgeEnergy
from . import attacks, eval, nn  # noqa: A004  (advx.eval, advx.nn are submodules)
from . import viz
from .nn import Normalize

__version__ = "0.1.0"


def build_info() -> dict:
    """How the installed extension was built: torch version, CUDA and archs, OpenMP."""
    return dict(_C.build_info())


__all__ = ["ops", "reference", "optim", "attacks", "eval", "nn", "viz", "Normalize", "EdgeEnergy",
           "LpBall", "Box", "build_info", "__version__"]
