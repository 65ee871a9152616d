"""Fused operators (torch.ops.advx.*) behind Python signatures that match advx.reference."""
from .project import pgd_step_, project_

__all__ = ["project_", "pgd_step_"]
