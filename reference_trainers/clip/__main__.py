"""`python -m reference_trainers.clip --preset cpu-fmnist --out runs/clip` (see train.py);
`--framework jax` runs the JAX trainer (reference_trainers/jax/clip.py) without importing torch."""

import sys

from reference_trainers.common.loop import command_line

if __name__ == "__main__":
    raise SystemExit(command_line("clip", sys.argv[1:]))
