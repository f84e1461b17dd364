"""ScanPruner: the state machine that joins schedule, warm-up, selection, plans and the store.

    pruner = ScanPruner(num_samples=N, num_views=2, config=ScanConfig(), store="run/scan.zarr")
    for epoch in range(pruner.next_epoch, epochs):
        plan = pruner.plan_epoch(epoch)
        for ids in batches_of(plan.shard(rank, world_size)):
            pruner.record(ids, per_view_losses)       # (num_views, B)
        summary = pruner.end_epoch()

Per batch, `record` validates its input and, in a preparation epoch, marks the batch's
candidates in two packed bitmaps at once (scope="batch", SPEC.md); nothing else per sample is
kept. At `end_epoch` the ranks combine what they saw (mean loss by sum, candidates by bitwise
or), warm-up is decided on the global mean, and the state is persisted.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from scan_core import bitset, rules
from scan_core.candidates import Candidates, after_preparation
from scan_core.comm import Communicator, SingleProcess, all_or_none, check_agreement
from scan_core.config import ScanConfig
from scan_core.coverage import EpochTally
from scan_core.epoch_losses import EpochLosses
from scan_core.errors import ScanConfigError, ScanStateError
from scan_core.inputs import HISTORY_DTYPES, as_ids, as_losses, check_arguments, raise_bad_batch
from scan_core.plan import EpochPlan
from scan_core.select import SALT_HIGH, SALT_LOW, k_of, record_batch, stream_key
from scan_core.state import (ARRAY_FIELDS, SCALAR_FIELDS, STATE_ATTRIBUTES, STATE_SCHEMA,
                             check_state, parse_state)
from scan_core.store import LossStore, open_on_ranks
from scan_core.summary import EpochSummary
from scan_core.target import check_reachable, floor_after_preparation, solve_at_warmup_end
from scan_core.warmup import WarmupState, earliest_e0, end_of_epoch, initial_warmup

__all__ = ["HISTORY_DTYPES", "ScanPruner"]


class ScanPruner:
    """Plans which samples each epoch trains on, from the per-sample losses it is shown.

    Args:
      num_samples: N; sample ids are 0..N-1.
      num_views: per-sample loss directions (2 for CLIP's i->t / t->i and MoCo's two views).
      config: the ScanConfig (rule, rates, schedule, seed). Default: the authors' CLIP config.
      store: path of a Zarr store. New: created. Existing: the run resumes from its last
        completed epoch (`next_epoch` says which); a store of another config is refused.
      communicator: a `Communicator` for data-parallel runs; rank 0 writes the store.
      loss_history: "float16" / "float32" to keep every preparation epoch's per-view losses in
        the store (for analysis; costs num_views * N * itemsize per preparation epoch).
      resume_epoch: resume from the store's snapshot of exactly this epoch (the one a model
        checkpoint matches) instead of its newest; -1 starts afresh over the store.
      coverage: what `end_epoch` does when the epoch's records do not cover its kept ids once
        each (beyond DistributedSampler's padding and drop_last): "warn" (a
        ScanCoverageWarning with the counts), "error" (ScanCoverageError, the epoch stays
        open) or "off" (no seen bitmap is kept: record() saves one random bit write per id,
        and the summary's num_unrecorded / num_repeated read 0). Checked in every epoch that
        recorded anything. Every rank must use the same policy.
    """

    def __init__(self, num_samples: int, num_views: int = 2, config: ScanConfig | None = None,
                 store: str | os.PathLike[str] | None = None, *,
                 communicator: Communicator | None = None, loss_history: str | None = None,
                 resume_epoch: int | None = None, coverage: str = "warn") -> None:
        check_arguments(num_samples, num_views, config, store, loss_history, coverage)
        self.num_samples = int(num_samples)
        self.num_views = int(num_views)
        self.config = config if config is not None else ScanConfig()
        self.loss_history = loss_history
        self.coverage = coverage
        self._comm: Communicator = communicator if communicator is not None else SingleProcess()
        self.rank, self.world_size = int(self._comm.rank), int(self._comm.world_size)
        cfg = self.config
        if cfg.target_rate is not None:  # refuse up front what even the best case cannot reach
            assert cfg.num_epochs is not None
            check_reachable(cfg, earliest_e0(cfg))
        self._reset_state()
        self._store: LossStore | None = None
        if resume_epoch is not None and store is None:
            raise ScanConfigError("resume_epoch needs a store to resume from.")
        if store is not None:
            self._store = open_on_ranks(store, self._meta(), self._comm, resume_epoch,
                                        self.load_state_dict)
        if self.world_size > 1:  # a collective: every rank constructs its pruner
            self._check_agreement("construction" if store is None else "resume from the store")

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def next_epoch(self) -> int:
        """The epoch to plan next: 0 for a new run, last completed epoch + 1 after a resume."""
        return self._next_epoch

    @property
    def warmup_ended_at(self) -> int | None:
        """e0, the first pruning epoch, once warm-up has ended."""
        return self._warmup.e0

    @property
    def rho_low(self) -> float:
        """The redundant-end share in use (config.rho_low, scaled by a target rate)."""
        return min(1.0, self.config.rho_low * self._scale) if self.config.mode != "ill_matched" else 0.0

    @property
    def rho_high(self) -> float:
        """The ill-matched-end share in use (config.rho_high, scaled by a target rate)."""
        return min(1.0, self.config.rho_high * self._scale) if self.config.mode != "redundant" else 0.0

    @property
    def schedule_floor(self) -> float:
        """beta: mutation epochs drop beta + (1 - beta) * rho_cur of D' (0 = the paper's)."""
        return self._floor

    def plan_epoch(self, epoch: int) -> EpochPlan:
        """The plan of `epoch`, which must be `next_epoch`. Calling it again for the open epoch
        returns the same plan. A refused call (a ScanError) leaves the pruner as it was."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
            raise ScanConfigError(
                f"plan_epoch(epoch): epoch must be an int, got {epoch!r} "
                f"({type(epoch).__name__}); pass pruner.next_epoch.")
        epoch = int(epoch)
        if self._plan is not None:
            if epoch == self._plan.epoch:
                return self._plan
            raise ScanStateError(
                f"plan_epoch({epoch}) while epoch {self._plan.epoch} is open; call end_epoch() "
                "first.")
        if epoch != self._next_epoch:
            raise ScanStateError(
                f"plan_epoch({epoch}): the next epoch of this run is {self._next_epoch} "
                "(epochs are planned in order; a resumed run starts at pruner.next_epoch).")
        # Everything is built in locals first and committed at the end, where nothing can
        # raise: a call that fails half-way must not leave a half-open epoch behind.
        cfg, n = self.config, self.num_samples
        phase, rho = rules.phase_and_rho(cfg, epoch, self._warmup.e0, self._floor)
        drop, weight_bits, weight, num_candidates = rules.mutation_drop(
            cfg, epoch, rho, n, self._red, self._ill, self._scores) if phase == "mutate" \
            else (None, None, 1.0, 0)
        if self._retired is not None and phase != "warmup":  # retired: gone for the run
            drop = self._retired.copy() if drop is None else drop | self._retired
        collecting = rules.collects_candidates(cfg, phase, self._num_preparations)
        num_kept = n - (bitset.popcount(drop) if drop is not None else 0)
        plan = EpochPlan(epoch=epoch, phase=phase, rho_cur=rho, num_samples=n,
                         num_candidates=num_candidates, num_kept=num_kept, seed=cfg.seed,
                         drop_bits=drop, weight_bits=weight_bits, weight=weight)
        want_losses = (collecting and (cfg.scope == "global" or self.loss_history
                                       or cfg.retire_share > 0)) or cfg.rule == "infobatch"
        epoch_losses = EpochLosses(self.num_views, n) if want_losses else None
        keys = (stream_key(cfg.seed, epoch, SALT_LOW), stream_key(cfg.seed, epoch, SALT_HIGH))
        # -- commit -------------------------------------------------------------------------
        if collecting and cfg.scope == "batch":
            self._red[:] = 0
            self._ill[:] = 0
        self._collecting, self._plan, self._epoch_losses = collecting, plan, epoch_losses
        self._collect_batch = collecting and cfg.scope == "batch"
        self._keys, self._tally = keys, EpochTally(n, self.coverage)
        self._k_cache: dict[int, tuple[int, int]] = {}
        return plan

    def record(self, ids: np.ndarray, losses: np.ndarray) -> None:
        """Show the pruner one batch: ids (B,) integers, losses (num_views, B) per-sample
        per-view losses (a (B,) array is accepted when num_views == 1)."""
        plan = self._plan
        if plan is None:
            raise ScanStateError("record() outside an epoch: call plan_epoch(epoch) first.")
        ids = as_ids(ids)
        losses = as_losses(losses, self.num_views, ids.shape[0])
        collect = self._collect_batch
        batch = ids.shape[0]
        k_low, k_high = self._ks(batch) if collect else (0, 0)
        code, pos, total = record_batch(
            ids, losses, self.num_samples, plan.drop_bits, collect, k_low, k_high,
            self._keys[0], self._keys[1], self._red, self._ill, self._tally.seen_bits)
        if code:
            raise_bad_batch(code, pos, ids, losses, self.num_samples, plan.epoch)
        self._tally.add(batch, total)
        if self._epoch_losses is not None:
            self._epoch_losses.add(ids, losses, normalize=self.config.global_normalization == "batch"
                                   and self.config.scope == "global")

    def _ks(self, batch: int) -> tuple[int, int]:
        """(floor(rho_low * B), floor(rho_high * B)), cached per batch size for the epoch."""
        ks = self._k_cache.get(batch)
        if ks is None:
            ks = self._k_cache[batch] = (k_of(self.rho_low, batch), k_of(self.rho_high, batch))
        return ks

    def end_epoch(self) -> EpochSummary:
        """Close the open epoch: combine ranks, check coverage, update warm-up and candidates,
        persist. All or nothing: if any step fails (a refused coverage check, ranks that
        disagree, a store that cannot be written), the pruner is left exactly as before the
        call, its epoch still open, so it never runs ahead of its store."""
        if self._plan is None:
            raise ScanStateError(
                "end_epoch() without an open epoch (called twice, or before plan_epoch()).")
        saved = {name: getattr(self, name) for name in self._EPOCH_STATE}
        try:
            return self._end_epoch(self._plan)
        except BaseException:
            for name, value in saved.items():
                setattr(self, name, value)
            raise

    # Every attribute end_epoch may replace; none of them is changed in place by it, so
    # putting the old references back restores the pruner exactly.
    _EPOCH_STATE = ("_plan", "_epoch_losses", "_collecting") + STATE_ATTRIBUTES

    def _end_epoch(self, plan: EpochPlan) -> EpochSummary:
        cfg = self.config
        mean_loss, count, unrecorded, repeated = self._tally.close(plan, self._comm, self.coverage)
        if mean_loss is None and plan.phase in ("warmup", "prepare"):
            raise ScanStateError(
                f"end_epoch(): no losses were recorded in {plan.phase} epoch {plan.epoch} on any "
                "rank; SCAN needs record(ids, losses) for every batch of such an epoch.")
        epoch_losses = self._epoch_losses
        if epoch_losses is not None and self.world_size > 1:
            epoch_losses = epoch_losses.all_reduced(self._comm)
        if self._collecting:
            self._finish_preparation(plan.epoch, epoch_losses)
        if cfg.rule == "infobatch" and epoch_losses is not None:
            self._scores = epoch_losses.updated_scores(self._scores)
        if mean_loss is not None and self._warmup.e0 is None:
            self._end_warmup_step(plan.epoch, mean_loss)
        # Sample-visits are counted as served (recorded, padding repeats included, drop_last
        # cuts excluded); an epoch that recorded nothing counts its plan.
        self._visits_kept += count if count else plan.num_kept
        self._visits_full += self.num_samples
        summary = EpochSummary(
            epoch=plan.epoch, phase=plan.phase, rho_cur=plan.rho_cur, mean_loss=mean_loss,
            num_recorded=count, warmup_ended_at=self._warmup.e0,
            num_candidates=self.num_candidates, num_kept=plan.num_kept,
            pruned_share=plan.pruned_share,
            realised_saving=1.0 - self._visits_kept / self._visits_full,
            rho_low=self.rho_low, rho_high=self.rho_high,
            schedule_floor=self._floor, num_unrecorded=unrecorded, num_repeated=repeated)
        self._log = self._log + [summary.as_dict()]
        if plan.phase == "prepare" and cfg.target_rate is not None:
            self._retarget(plan.epoch)
        self._plan, self._epoch_losses = None, None
        self._next_epoch = plan.epoch + 1
        if self.world_size > 1:
            self._check_agreement(f"end of epoch {plan.epoch}", plan.fingerprint)
        if self._store is not None:
            store, state = self._store, self.state_dict()
            all_or_none(self._comm, lambda: store.write_snapshot(plan.epoch, state),
                        f"writing the snapshot of epoch {plan.epoch} to {store.path!r}")
        return summary

    def close(self) -> None:
        """Release the store's writer lock (rank 0), so another process may write the store.
        The pruner keeps its state but persists nothing more. Also done at interpreter exit."""
        if self._store is not None:
            self._store.close()

    # -- results ------------------------------------------------------------------------------
    @property
    def num_candidates(self) -> int:
        """|D'| of the current candidate set."""
        return bitset.popcount(self._red | self._ill)

    def candidate_ids(self, end: str = "both") -> np.ndarray:
        """Sorted ids of D' ("both"), or of its "redundant" / "ill_matched" end."""
        bits = {"both": lambda: self._red | self._ill, "redundant": lambda: self._red,
                "ill_matched": lambda: self._ill}.get(end)
        if bits is None:
            raise ScanConfigError(f"end must be 'both', 'redundant' or 'ill_matched', got {end!r}.")
        return bitset.ids_of(bits(), self.num_samples, True)

    def coreset(self) -> np.ndarray:
        """Ids outside the last D' (SPEC.md, the coreset by-product), sorted."""
        if self._num_preparations == 0:
            raise ScanStateError(
                "coreset(): no preparation epoch has completed yet, so there is no D' to leave out.")
        return bitset.ids_of(self._red | self._ill, self.num_samples, False)

    @property
    def log(self) -> list[dict[str, Any]]:
        """One dict per completed epoch (EpochSummary.as_dict())."""
        return list(self._log)

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly: JSON-able scalars and numpy arrays."""
        if self._plan is not None:
            raise ScanStateError(
                f"state_dict() while epoch {self._plan.epoch} is open; call it after end_epoch() "
                "(a mid-epoch snapshot could not resume identically).")
        state: dict[str, Any] = {
            "schema_version": STATE_SCHEMA, "config": self.config.to_dict(),
            "num_samples": self.num_samples, "num_views": self.num_views,
            "world_size": self.world_size,
            "warmup_prev_loss": self._warmup.prev_loss, "warmup_e0": self._warmup.e0,
            "log": list(self._log)}
        state.update({key: getattr(self, attr) for key, (attr, _) in SCALAR_FIELDS.items()})
        for key, attr in ARRAY_FIELDS.items():
            value = getattr(self, attr)
            if value is not None:
                state[key] = value.copy()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from `state_dict()` (of the same config, N, views and world size).
        A refused state (ScanResumeError naming the field) leaves the pruner as it was."""
        if self._plan is not None:
            raise ScanStateError("load_state_dict() while an epoch is open.")
        check_state(state, config=self.config.to_dict(), num_samples=self.num_samples,
                    num_views=self.num_views, world_size=self.world_size)
        values = parse_state(state, num_views=self.num_views, num_samples=self.num_samples,
                             with_ema=self._ema is not None, with_scores=self._scores is not None,
                             ill_prev_rows=self.config.ill_persistence - 1,
                             with_retired=self._retired is not None)
        for name, value in values.items():  # nothing below can raise: all or nothing
            setattr(self, name, value)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], *, communicator: Communicator | None = None,
                        store: str | os.PathLike[str] | None = None,
                        coverage: str = "warn") -> "ScanPruner":
        pruner = cls(int(state["num_samples"]), int(state["num_views"]),
                     ScanConfig.from_dict(dict(state["config"])), communicator=communicator,
                     coverage=coverage)
        pruner.load_state_dict(state)
        if store is not None:
            pruner._store = LossStore.open(store, pruner._meta(), writable=pruner.rank == 0)
        return pruner

    # -- internals ----------------------------------------------------------------------------
    def _reset_state(self) -> None:
        cfg, n = self.config, self.num_samples
        self._next_epoch = 0
        self._warmup = initial_warmup(cfg)
        self._scale, self._floor = 1.0, 0.0
        if cfg.target_rate is not None and self._warmup.e0 is not None:
            self._scale, self._floor = solve_at_warmup_end(cfg, self._warmup.e0)
        self._num_preparations = 0
        self._visits_kept = self._visits_full = 0
        self._log: list[dict[str, Any]] = []
        self._red, self._ill = bitset.new_bits(n), bitset.new_bits(n)
        use_ema = cfg.scope == "global" and cfg.global_ema > 0
        self._ema = np.full((self.num_views, n), np.nan, np.float32) if use_ema else None
        self._scores = np.full(n, np.inf, np.float32) if cfg.rule == "infobatch" else None
        self._ill_prev = np.zeros((cfg.ill_persistence - 1, bitset.num_bytes(n)), np.uint8) \
            if cfg.ill_persistence > 1 else None
        self._retired = bitset.new_bits(n) if cfg.retire_share > 0 else None
        self._plan: EpochPlan | None = None
        self._collecting = self._collect_batch = False
        self._epoch_losses: EpochLosses | None = None
        self._tally = EpochTally(n, "off")
        self._keys = (np.uint64(0), np.uint64(0))
        self._k_cache = {}

    def _meta(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "num_samples": self.num_samples,
                "num_views": self.num_views, "world_size": self.world_size}

    def _end_warmup_step(self, epoch: int, mean_loss: float) -> None:
        self._warmup = end_of_epoch(self._warmup, epoch, mean_loss, self.config)
        if self._warmup.e0 is not None and self.config.target_rate is not None:
            self._scale, self._floor = solve_at_warmup_end(self.config, self._warmup.e0)

    def _retarget(self, epoch: int) -> None:
        cfg, e0 = self.config, self._warmup.e0
        assert cfg.target_rate is not None and cfg.num_epochs is not None and e0 is not None
        self._floor = floor_after_preparation(cfg, epoch, e0, self._visits_full - self._visits_kept,
                                              self.num_samples, self.num_candidates)

    def _finish_preparation(self, epoch: int, epoch_losses: EpochLosses | None) -> None:
        before = Candidates(self._red, self._ill, self._ema, self._ill_prev, self._retired)
        self._red, self._ill, self._ema, self._ill_prev, self._retired = after_preparation(
            before, epoch_losses, self.config, epoch, self.rho_low, self.rho_high,
            self.num_samples, self._comm)
        if self.loss_history and self._store is not None and epoch_losses is not None:
            self._store.write_history(epoch, epoch_losses, self.loss_history)
        self._num_preparations += 1
        self._collecting = False

    def _check_agreement(self, where: str, plan_fingerprint: str = "") -> None:
        """All ranks must hold the same config, coverage policy, epoch, candidates and (just
        ended) plan ("off" skips a collective the other coverage policies run)."""
        check_agreement(
            self._comm, where,
            [json.dumps(self._meta(), sort_keys=True).encode(), plan_fingerprint.encode(),
             self.coverage.encode(),
             np.asarray([self._next_epoch, self._num_preparations], np.int64).tobytes(),
             self._red.tobytes(), self._ill.tobytes()],
            f"rank {self.rank}: epoch {self._next_epoch}, |D'| {self.num_candidates}, plan "
            f"{plan_fingerprint or '-'}, seed {self.config.seed}, coverage {self.coverage!r}")
