"""scan_core: SCAN's data pruning for contrastive pre-training, framework-free.

SCAN (arXiv 2411.09126) ranks samples by the per-sample InfoNCE loss the trainer already
computes, collects the lowest-loss (redundant) and highest-loss (ill-matched) ends of each
batch as candidates, and drops a cosine-scheduled share of them per epoch after a loss-plateau
warm-up. This package imports numpy, numba and zarr only; adapters/ hold the framework glue.

>>> from scan_core import ScanConfig, ScanPruner
>>> pruner = ScanPruner(num_samples=1000, num_views=2, config=ScanConfig.clip())
>>> pruner.plan_epoch(0).phase
'warmup'
"""

from scan_core.comm import Communicator, SingleProcess, ThreadGroup, run_ranks
from scan_core.config import RULE_NAMES, ScanConfig
from scan_core.errors import (ScanConfigError, ScanCoverageError, ScanCoverageWarning,
                              ScanDistributedError, ScanError, ScanInputError, ScanResumeError,
                              ScanStateError, ScanStoreCorruptError, ScanStoreError,
                              ScanStoreLockedError, ScanStoreMismatchError,
                              ScanTargetUnreachableError)
from scan_core.plan import EpochPlan
from scan_core.pruner import ScanPruner
from scan_core.schedule import expected_saving, rho_cur
from scan_core.store import LossStore
from scan_core.summary import EpochSummary

__all__ = [
    "RULE_NAMES", "Communicator", "EpochPlan", "EpochSummary", "LossStore", "ScanConfig",
    "ScanConfigError", "ScanCoverageError", "ScanCoverageWarning", "ScanDistributedError",
    "ScanError", "ScanInputError", "ScanPruner", "ScanResumeError", "ScanStateError",
    "ScanStoreCorruptError", "ScanStoreError", "ScanStoreLockedError", "ScanStoreMismatchError",
    "ScanTargetUnreachableError", "SingleProcess", "ThreadGroup", "expected_saving", "rho_cur",
    "run_ranks",
]

__version__ = "0.1.0"
