"""MoCo v3 pre-training with SCAN (PyTorch): `python -m reference_trainers.moco --help`."""
