"""JAX adapter for scan_core: per-sample InfoNCE for CLIP and MoCo v3 as jnp functions that
jit, host-side batching of an EpochPlan, recording that never stalls the device, data-parallel
placement over local devices, and the multi-process communicator.

    from adapters.jax import (AsyncRecorder, JaxAdapter, JaxCommunicator, PlanSampler,
                              clip_loss, fold_lone_last, moco_loss, num_batches, pad_batch,
                              plan_batches, shard_batch, to_numpy)

`JaxAdapter` is this package's `adapters.protocol.FrameworkAdapter` (docs/adapters.md);
`PlanSampler` serves a pruner's plans epoch by epoch, as the JAX trainers use it.

docs/embedding-jax.md holds a complete jitted training loop. Like the torch adapter, this
package patches nothing global and draws every random number from a generator it seeds itself
(the shuffle) or from scan_core's counter-based hashes.
"""

from adapters._require import require_framework

require_framework("jax", extra="jax")

from adapters.jax.adapter import JaxAdapter, PlanSampler  # noqa: E402
from adapters.jax.batching import (  # noqa: E402
    fold_lone_last, num_batches, pad_batch, plan_batches, plan_permutation)
from adapters.jax.distributed import JaxCommunicator  # noqa: E402
from adapters.jax.losses import ContrastiveLoss, clip_loss, moco_loss  # noqa: E402
from adapters.jax.placement import DATA_AXIS, data_mesh, local_rows, shard_batch, to_numpy  # noqa: E402
from adapters.jax.recording import AsyncRecorder  # noqa: E402

__all__ = ["DATA_AXIS", "AsyncRecorder", "ContrastiveLoss", "JaxAdapter", "JaxCommunicator",
           "PlanSampler", "clip_loss", "data_mesh", "fold_lone_last", "local_rows", "moco_loss",
           "num_batches", "pad_batch", "plan_batches", "plan_permutation", "shard_batch",
           "to_numpy"]
