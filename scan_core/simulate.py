"""A synthetic loss stream and a driver: preview what a config saves before training with it.

The stream imitates a contrastive run: each sample has a lasting difficulty (log-normal), the
mean loss decays like floor + scale * exp(-epoch / tau) so the warm-up detector has a plateau
to find, a planted share of "ill-matched" samples stays hard, and the two views are correlated
per-sample noise around the same value. Everything is a function of (seed, epoch, id), so
simulated ranks see exactly what one process would.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable

import numpy as np

from scan_core.comm import Communicator, run_ranks
from scan_core.config import ScanConfig
from scan_core.pruner import ScanPruner
from scan_core.schedule import expected_saving
from scan_core.summary import EpochSummary


@dataclasses.dataclass(frozen=True)
class SyntheticStream:
    """Per-sample per-view losses of a pretend contrastive run."""

    num_samples: int
    num_views: int = 2
    seed: int = 0
    ill_share: float = 0.1
    floor: float = 1.0
    scale: float = 3.0
    tau: float = 1.5

    def __post_init__(self) -> None:
        rng = np.random.Generator(np.random.PCG64([self.seed, 0x5CA7]))
        difficulty = rng.lognormal(0.0, 0.35, self.num_samples).astype(np.float32)
        ill = rng.random(self.num_samples) < self.ill_share
        difficulty[ill] *= 3.0
        object.__setattr__(self, "difficulty", difficulty)
        object.__setattr__(self, "ill_matched", ill)

    def epoch_table(self, epoch: int) -> np.ndarray:
        """(num_views, N) float32 losses of every sample in `epoch`."""
        rng = np.random.Generator(np.random.PCG64([self.seed, 0x1055, epoch]))
        level = self.floor + self.scale * math.exp(-epoch / self.tau)
        shared = rng.standard_normal(self.num_samples, dtype=np.float32) * 0.15
        table = np.empty((self.num_views, self.num_samples), np.float32)
        for v in range(self.num_views):
            own = rng.standard_normal(self.num_samples, dtype=np.float32) * 0.05
            table[v] = self.difficulty * level * np.exp(shared + own)  # type: ignore[attr-defined]
        return table


def simulate(num_samples: int, epochs: int, batch_size: int, config: ScanConfig, *,
             world_size: int = 1, store: str | None = None, ill_share: float = 0.1,
             on_epoch: Callable[[EpochSummary, float], None] | None = None) -> list[EpochSummary]:
    """Drive a ScanPruner (one per simulated rank) through `epochs` epochs of the synthetic
    stream; returns rank 0's summaries. `on_epoch(summary, seconds)` is called on rank 0."""
    stream = SyntheticStream(num_samples, seed=config.seed, ill_share=ill_share)

    def one_rank(comm: Communicator) -> list[EpochSummary]:
        pruner = ScanPruner(num_samples, 2, config, store, communicator=comm)
        out = []
        for epoch in range(pruner.next_epoch, epochs):
            start = time.perf_counter()
            plan = pruner.plan_epoch(epoch)
            table = stream.epoch_table(epoch)
            ids = plan.shard(comm.rank, comm.world_size, drop_last=False)
            for s in range(0, len(ids), batch_size):
                batch = ids[s:s + batch_size]
                pruner.record(batch, table[:, batch])
            summary = pruner.end_epoch()
            if comm.rank == 0 and on_epoch is not None:
                on_epoch(summary, time.perf_counter() - start)
            out.append(summary)
        return out

    return run_ranks(world_size, one_rank)[0]


HEADER = (f"{'epoch':>5}  {'phase':<8} {'rho_cur':>7} {'|D_prime|':>10} {'kept':>10} "
          f"{'pruned':>7} {'saved_so_far':>12} {'mean_loss':>9} {'sec':>6}")


def format_row(s: EpochSummary, seconds: float) -> str:
    loss = f"{s.mean_loss:9.4f}" if s.mean_loss is not None else f"{'-':>9}"
    return (f"{s.epoch:>5}  {s.phase:<8} {s.rho_cur:>7.3f} {s.num_candidates:>10,d} "
            f"{s.num_kept:>10,d} {s.pruned_share:>7.1%} {s.realised_saving:>12.2%} {loss} "
            f"{seconds:>6.2f}")


def run_and_print(num_samples: int, epochs: int, batch_size: int, config: ScanConfig, *,
                  world_size: int = 1, store: str | None = None, ill_share: float = 0.1,
                  stream=None) -> list[EpochSummary]:
    stream = stream if stream is not None else sys.stdout
    print(f"SCAN simulation: N={num_samples:,}, {epochs} epochs, batch {batch_size} per rank, "
          f"{world_size} rank(s), rule={config.rule}, mode={config.mode}, "
          f"rho_low={config.rho_low}, rho_high={config.rho_high}, T_cos={config.t_cos}, "
          f"T_td={config.warmup_threshold}, scope={config.scope}, seed={config.seed}",
          file=stream, flush=True)
    print(HEADER, file=stream, flush=True)
    t0 = time.perf_counter()
    summaries = simulate(num_samples, epochs, batch_size, config, world_size=world_size,
                         store=store, ill_share=ill_share,
                         on_epoch=lambda s, sec: print(format_row(s, sec), file=stream, flush=True))
    if summaries:
        last = summaries[-1]
        e0 = last.warmup_ended_at
        line = (f"realised saving: {last.realised_saving:.2%} of {epochs * num_samples:,} "
                f"sample-visits")
        if e0 is not None and e0 < epochs:
            approx = expected_saving(epochs, e0, config.t_cos, last.num_candidates / num_samples,
                                     config.full_tail_epochs, last.schedule_floor)
            line += f" (schedule estimate with the last |D'|: {approx:.2%}); warm-up ended before epoch {e0}"
        else:
            line += "; warm-up never ended"
        print(line + f"; {time.perf_counter() - t0:.1f} s", file=stream, flush=True)
    return summaries
