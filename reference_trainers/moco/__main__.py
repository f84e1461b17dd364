"""`python -m reference_trainers.moco --preset cpu-fmnist-moco --out runs/moco` (see train.py);
`--framework jax` runs the JAX trainer (reference_trainers/jax/moco.py) without importing torch."""

import sys

from reference_trainers.common.loop import framework_of

if __name__ == "__main__":
    if framework_of(sys.argv[1:]) == "jax":
        from reference_trainers.jax.moco import main
    else:
        from reference_trainers.moco.train import main
    raise SystemExit(main())
