"""`python -m reference_trainers.clip --preset cpu-fmnist --out runs/clip` (see train.py)."""

from reference_trainers.clip.train import main

if __name__ == "__main__":
    raise SystemExit(main())
