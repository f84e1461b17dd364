"""`python -m reference_trainers.clip --preset cpu-fmnist --out runs/clip` (see train.py);
`--framework jax` runs the JAX trainer (reference_trainers/jax/clip.py) without importing torch."""

import sys

from reference_trainers.common.loop import framework_of

if __name__ == "__main__":
    if framework_of(sys.argv[1:]) == "jax":
        from reference_trainers.jax.clip import main
    else:
        from reference_trainers.clip.train import main
    raise SystemExit(main())
