"""The offline wrong-caption detectors (reference_trainers/experiments/history_detectors.py) on a
run directory built by hand: 20 wrong captions stay at the top of both preparation epochs, 20
hard correct pairs start at the top and fall, 60 ordinary pairs stay low."""

from __future__ import annotations

import json

import numpy as np
import zarr

from reference_trainers.experiments.history_detectors import detectors, main, score, top
from scan_core import LossStore, ScanConfig

N = 100
WRONG, HARD = np.arange(0, 20), np.arange(20, 40)


def make_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    planted = np.zeros(N, bool)
    planted[WRONG] = True
    np.savez(run / "planted.npz", mismatched=planted, duplicate_of=np.full(N, -1))
    rng = np.random.default_rng(0)
    meta = {"config": ScanConfig().to_dict(), "num_samples": N, "num_views": 2, "world_size": 1}
    store = LossStore.open(run / "scan.zarr", meta, writable=True)
    snaps = tmp_path / "snaps"
    for epoch, hard_loss in ((2, 9.0), (6, 3.0)):
        losses = 1.0 + 0.1 * rng.random((2, N))
        losses[:, WRONG] = 8.0 + 0.1 * rng.random((2, 20))
        losses[:, HARD] = hard_loss + 0.1 * rng.random((2, 20))
        store.write_history(epoch, losses.astype(np.float32), "float16")
        ill = np.zeros(N, bool)
        ill[WRONG] = True
        ill[HARD if epoch == 2 else HARD[:5]] = True  # SCAN's end: wrong and hard pairs
        arr = zarr.create_array(str(snaps / f"epoch_{epoch:08d}" / "ill_bits"),
                                shape=((N + 7) // 8,), dtype="uint8")
        arr[...] = np.packbits(ill, bitorder="little")
    store.close()
    rows = [{"epoch": 2, "phase": "prepare", "num_ill": 40, "ill_precision": 0.5,
             "ill_recall": 1.0},
            {"epoch": 3, "phase": "mutate"},
            {"epoch": 6, "phase": "prepare", "num_ill": 25, "ill_precision": 0.8,
             "ill_recall": 1.0}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return run, snaps


def by_name(rows, k):
    return {r["detector"]: (r["size"], r["precision"], r["recall"]) for r in rows if r["k"] == k}


def test_score_and_top():
    planted = np.array([1, 1, 0, 0], bool)
    assert score(np.array([1, 0, 1, 0], bool), planted) == {"size": 2, "precision": 0.5,
                                                             "recall": 0.5}
    assert score(np.zeros(4, bool), planted)["precision"] is None
    values = np.array([3.0, np.nan, 3.0, 1.0, 5.0])
    assert np.flatnonzero(top(values, 2)).tolist() == [0, 4]  # tie at 3.0: the lower id
    assert top(values, 9).sum() == 4 and not top(values, 0).any()


def test_each_detector_on_a_run_built_by_hand(tmp_path):
    run, snaps = make_run(tmp_path)
    rows = detectors(run, snaps)
    first, second = by_name(rows, 1), by_name(rows, 2)
    assert set(first) == {"scan", "scan_recomputed", "global_last", "mean", "last@0.05N",
                          "last@0.10N", "last@0.15N", "last@0.20N"}
    assert first["scan"] == (40, 0.5, 1.0) and first["scan_recomputed"] == (40, 0.5, 1.0)
    # One epoch cannot tell the hard pairs from the wrong ones: they are above them.
    assert first["global_last"] == (40, 0.5, 1.0)
    # At k = 2 the hard pairs fell: the top 25 by persist hold every wrong caption and 5 of
    # the hard pairs (still above the ordinary ones), the same as SCAN's logged end.
    assert second["persist"] == (25, 0.8, 1.0)
    assert second["scan_and_previous"] == (25, 0.8, 1.0)  # the 5 hard were in both ends
    assert second["scan_not_falling"] == (20, 1.0, 1.0)  # their loss fell: kept
    assert second["rising"][0] == 25
    assert second["persist@0.20N"] == (20, 1.0, 1.0)
    assert second["persist@0.05N"] == (5, 1.0, 0.25)
    assert second["persist@0.10N"] == (10, 1.0, 0.5)
    assert second["persist@same_size"] == (25, 0.8, 1.0)
    # At 20% of N one epoch alone already ranks the wrong captions first (the hard ones fell).
    assert second["last@0.20N"] == (20, 1.0, 1.0)
    assert first["last@0.20N"][1] < 1.0  # at the first epoch the hard pairs are on top


def test_the_command_prints_a_table_and_writes_json(tmp_path, capsys):
    run, snaps = make_run(tmp_path)
    assert main([str(run), "--snapshots", str(snaps), "--json", str(tmp_path / "o.json")]) == 0
    out = capsys.readouterr().out
    assert "| 2 (6) | persist | 25 | 80.0% | 100.0% |" in out
    assert "20 planted wrong captions." in out
    assert len(json.loads((tmp_path / "o.json").read_text())) == len(detectors(run, snaps))
