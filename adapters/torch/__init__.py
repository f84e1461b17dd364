"""PyTorch adapter for scan_core: a Sampler over epoch plans, per-sample InfoNCE for CLIP and
MoCo v3, and the torch.distributed communicator.

    from adapters.torch import ScanSampler, TorchAdapter, TorchCommunicator, clip_loss, record

`TorchAdapter` is this package's `adapters.protocol.FrameworkAdapter` (docs/adapters.md).

No global patching of PyTorch and no reseeding of global RNGs: every random draw comes from a
generator this package creates (the shuffle) or from scan_core's counter-based hashes.
"""

from adapters._require import require_framework

require_framework("torch", extra="torch")

from adapters.torch.adapter import TorchAdapter  # noqa: E402
from adapters.torch.distributed import TorchCommunicator, gather_features, record, to_numpy  # noqa: E402
from adapters.torch.losses import ContrastiveLoss, clip_loss, moco_loss  # noqa: E402
from adapters.torch.sampler import PlanBatchSampler, ScanSampler, torch_permutation  # noqa: E402

__all__ = ["ContrastiveLoss", "PlanBatchSampler", "ScanSampler", "TorchAdapter",
           "TorchCommunicator", "clip_loss", "gather_features", "moco_loss", "record",
           "to_numpy", "torch_permutation"]
