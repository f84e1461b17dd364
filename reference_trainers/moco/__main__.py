"""`python -m reference_trainers.moco --preset cpu-fmnist-moco --out runs/moco` (see train.py)."""

from reference_trainers.moco.train import main

if __name__ == "__main__":
    raise SystemExit(main())
