"""The same functions as advx.ops, in plain PyTorch: short, readable, and the oracle
every fused kernel is tested against."""
from .edge_energy import edge_energy
from .project import pgd_step_, project_

__all__ = ["project_", "pgd_step_", "edge_energy"]
