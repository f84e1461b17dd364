"""The JAX reference trainers: CLIP and MoCo v3 pre-training with SCAN, in flax + optax.

    python -m reference_trainers.clip --framework jax --preset cpu-fmnist --out runs/clip-jax
    python -m reference_trainers.moco --framework jax --preset cpu-fmnist-moco --out runs/moco-jax

The same configs, presets, command line, run directory, metrics, summary and progress output as
the PyTorch trainers (common/config.py, common/loop.py, common/rundir.py, common/progress.py);
only the model, the step, the augmentation draws and the checkpoint format are JAX's own.
Nothing here imports torch. docs/jax-trainers.md says what differs and why.

Rooms: `models` (the CPU CLIP), `moco_models` (SmallResNet, VitTiny, MoCo heads), `steps`
(optimisers, schedules, the jitted train steps, data-parallel placement), `augment` (numpy
augmentations), `evaluation` (zero-shot, linear probe with optax.lbfgs, kNN), `checkpoint`
(npz checkpoints), `runtime` (the epoch's batches and steps), `processes` (several processes
under jax.distributed: --coordinator / --num-processes / --process-id), `clip` and `moco` (the
two trainers).
"""
