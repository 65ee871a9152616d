"""Fused operators (torch.ops.advx.*) behind Python signatures that match advx.reference."""
from .edge_energy import edge_energy
from .project import pgd_step_, project_

__all__ = ["project_", "pgd_step_", "edge_energy"]
