"""The linear probe's fixed constants, framework-free: shared by common/evaluation.py (PyTorch)
and reference_trainers/jax/evaluation.py, so both trainers fit the same probe."""

PROBE_STEPS = 100
"""Full-batch L-BFGS iterations of the linear probe (each sees the whole train split)."""
PROBE_WEIGHT_DECAY = 1e-4
"""L2 penalty on the probe's weights, added to the mean cross-entropy as wd/2 * ||W||^2."""
