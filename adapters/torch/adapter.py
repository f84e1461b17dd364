"""TorchAdapter: the FrameworkAdapter of PyTorch (adapters/protocol.py).

Rank and world size are torch.distributed's (`TorchCommunicator`) once a process group is
initialised, one rank otherwise. The shuffle is DistributedSampler's (torch.randperm seeded
seed + epoch, `torch_permutation`), so with nothing pruned a rank serves exactly the ids
DistributedSampler would, as `ScanSampler` does; `to_numpy` shares a CPU tensor's storage.
A training loop over a DataLoader uses `ScanSampler` (it also asks the pruner for each
epoch's plan); this class is the framework-neutral face of the same arithmetic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.distributed as dist

from adapters.host import HostAdapter
from adapters.torch.distributed import TorchCommunicator, to_numpy
from adapters.torch.sampler import torch_permutation
from scan_core.comm import Communicator, SingleProcess
from scan_core.plan import Permutation


class TorchAdapter(HostAdapter):
    """communicator: default `TorchCommunicator()` under an initialised process group, else
    `scan_core.SingleProcess()`.

    >>> import torch
    >>> TorchAdapter().to_numpy(torch.arange(3)).tolist()
    [0, 1, 2]
    """

    def __init__(self, communicator: Communicator | None = None) -> None:
        if communicator is None:
            initialised = dist.is_available() and dist.is_initialized()
            communicator = TorchCommunicator() if initialised else SingleProcess()
        super().__init__(communicator)

    def to_numpy(self, array: Any) -> np.ndarray:
        """`adapters.torch.to_numpy`: detached; a CPU tensor's own storage, a device tensor
        copied to the host."""
        return to_numpy(array)

    def permutation(self, seed: int, epoch: int) -> Permutation:
        return torch_permutation(seed, epoch)
