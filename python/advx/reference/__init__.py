"""The same functions as advx.ops, in plain PyTorch: short, readable, and the oracle
every fused kernel is tested against."""
from .apgd import apgd_step_
from .edge_energy import edge_energy
from .optim import adagrad_step_, adam_step_, rmsprop_step_, sgd_step_
from .project import pgd_step_, project_, project_onto_
from .random import sample_bits

__all__ = ["project_", "pgd_step_", "project_onto_", "apgd_step_", "sample_bits", "edge_energy", "sgd_step_", "adagrad_step_", "rmsprop_step_", "adam_step_"]
