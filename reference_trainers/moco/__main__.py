"""`python -m reference_trainers.moco --preset cpu-fmnist-moco --out runs/moco` (see train.py);
`--framework jax` runs the JAX trainer (reference_trainers/jax/moco.py) without importing torch."""

import sys

from reference_trainers.common.loop import command_line

if __name__ == "__main__":
    raise SystemExit(command_line("moco", sys.argv[1:]))
