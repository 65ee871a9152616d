"""``from advx.constraints import LpBall`` keeps working: the constraint types live with
the ops that consume them, in advx.ops.constraints (public as advx.LpBall, advx.Box)."""
from .ops.constraints import Box, Constraint, LpBall

__all__ = ["Constraint", "LpBall", "Box"]
