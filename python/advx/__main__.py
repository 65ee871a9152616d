"""``python -m advx ...`` (and ``torchrun --nproc_per_node=N -m advx eval ...``): the advx command."""
import sys

from .cli import main

sys.exit(main())
