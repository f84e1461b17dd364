"""The experiment runner (issue 6): every suite's miniature, resume of a half-finished grid,
tables against the run JSONs, candidate quality against a hand computation, and `report` on a
tiny run (valid PNGs and the numbers behind them).

The miniatures train on a small synthetic Fashion-MNIST-format set written here, so they test
the machinery in seconds whether or not the real data is installed; the full suites (marked
slow) need the real data.
"""

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR, write_idx
from reference_trainers.common.planted import (PreparationStats, candidate_churn,
                                               candidate_quality)
from reference_trainers.common.host import cpu_name
from reference_trainers.experiments import derive as derive_mod
from reference_trainers.experiments.__main__ import main as cli
from reference_trainers.experiments.quality import snapshot_candidates, store_quality
from reference_trainers.experiments.report import report, view_mean
from reference_trainers.experiments.runner import load_result, run_grid
from reference_trainers.experiments.suites import (SUITES, RunSpec, make_run, select_cells,
                                                   suite_runs)
from reference_trainers.experiments.tables import suite_table
from reference_trainers.experiments.worker import execute, run_lock
from scan_core import LossStore, ScanConfig, ScanPruner

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fmnist_dir(tmp_path_factory):
    """Ten classes, each a bright block at its own place on dim noise: learnable in seconds."""
    directory = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 1200), ("t10k", 400)):
        labels = rng.permutation(np.arange(n) % 10)
        images = rng.integers(0, 40, (n, 28, 28)).astype(np.int16)
        for c in range(10):
            row, col = divmod(c, 5)
            images[labels == c, 4 + row * 10:12 + row * 10 + c % 3, 2 + col * 5:8 + col * 5] += 150
        write_idx(directory / f"{prefix}-images-idx3-ubyte", np.clip(images, 0, 255).astype(np.uint8))
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))
    return str(directory)


@pytest.fixture(scope="module")
def mini_grid(tmp_path_factory, fmnist_dir):
    """Every suite's miniature (one seed), in this process, one run after another."""
    root = tmp_path_factory.mktemp("grid")
    specs = [s for name in SUITES for s in suite_runs(name, (0,), miniature=True)]
    run_grid(specs, root, workers=0, threads=1, data_dir=fmnist_dir, stream=sys.stderr)
    return root


def _result(root, spec):
    result = load_result(Path(root), spec.run_id)
    assert result is not None, spec.run_id
    return result


# -- the suites' miniatures -------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SUITES))
def test_every_suite_miniature_runs_and_tabulates(mini_grid, name):
    specs = suite_runs(name, (0,), miniature=True)
    for spec in specs:
        result = _result(mini_grid, spec)
        if "target_rate" in spec.overrides and result["status"] != "ok":
            # 2 epochs cannot reach every rate: the trainer's own error is recorded, not a crash
            assert "ScanTargetUnreachableError" in result["error"] and "target_rate" in result["error"]
            continue
        assert result["status"] == "ok", (spec.cell, result.get("error"))
        epochs = spec.overrides["epochs"]              # 2, or 1 for a train-shorter row
        assert [r["epoch"] for r in result["metrics"]] == list(range(epochs))
        assert result["summary"]["wall_seconds"] > 0
        # the commit the run's code came from; None only outside a git checkout
        if (Path(__file__).resolve().parents[2] / ".git").exists():
            assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", result["code_version"])
        else:
            assert result["code_version"] is None
        # the CPU with its generation: runs match bit for bit only on one (docs/results.md)
        assert result["host"]["cpu"] == cpu_name()
        visits = sum(r["num_kept"] for r in result["metrics"])
        n = result["summary"]["num_samples"]
        assert result["summary"]["realised_pruned_share"] == pytest.approx(1 - visits / (epochs * n))
    text, numbers = suite_table(name, mini_grid, (0,), miniature=True)
    assert text.startswith(f"### {SUITES[name].title}")
    assert len(numbers["rows"]) == len({tuple(s.cell.items()) for s in specs})


def test_run_ids_are_stable_and_shared_between_cells():
    a, b = suite_runs("regimes", (0, 1)), suite_runs("regimes", (0, 1))
    assert [s.run_id for s in a] == [s.run_id for s in b]
    full = {s.cell["regime"]: s.run_id for s in a if s.rule == "full" and s.seed == 0}
    assert full["noise 20%"] == full["rates"]          # one full-data reference, not two
    scan1 = next(s for s in suite_runs("clip-table", (0,)) if s.rule == "scan")
    assert scan1.run_id in {s.run_id for s in suite_runs("quality", (0,))}
    threads = RunSpec(scan1.trainer, scan1.preset, {**scan1.overrides, "threads": 7})
    assert threads.run_id == scan1.run_id              # the machine is not part of a run
    assert len({s.run_id for s in suite_runs("clip-table", (0, 1, 2))}) == 21


def test_variants_cells_and_shared_runs():
    specs = suite_runs("variants", (0,))
    by_noise: dict[str, set[str]] = {}
    for s in specs:
        by_noise.setdefault(s.cell["noise"], set()).add(s.cell["variant"])
    every = {"full data", "random", "scan (paper)", "scope global", "ill every mutation",
             "full-data tail 2 ep", "random, ill-every budget"}
    assert by_noise == {"20%": every, "40%": every,
                        "60%": every - {"scope global", "full-data tail 2 ep"}}
    regimes = {(s.cell["regime"], s.cell["rule"]): s.run_id for s in suite_runs("regimes", (0,))}
    names = {"full data": "full", "random": "random", "scan (paper)": "scan"}
    for s in specs:   # full, random and paper SCAN at each noise are suite 3's runs
        if s.cell["variant"] in names:
            assert s.run_id == regimes[(f"noise {s.cell['noise']}", names[s.cell["variant"]])]
    budget = [s for s in specs if s.cell["variant"] == "random, ill-every budget"]
    assert all(s.rule == "random" and s.overrides["ill_every_mutation"] is True for s in budget)


def test_random_at_the_ill_every_budget_drops_as_many_as_its_scan_run(mini_grid):
    specs = {(s.cell["noise"], s.cell["variant"]): s
             for s in suite_runs("variants", (0,), miniature=True)}
    for noise in ("20%", "40%", "60%"):
        flag = _result(mini_grid, specs[(noise, "ill every mutation")])["metrics"]
        rnd = _result(mini_grid, specs[(noise, "random, ill-every budget")])["metrics"]
        paper = _result(mini_grid, specs[(noise, "scan (paper)")])["metrics"]
        assert [r["num_kept"] for r in rnd] == [r["num_kept"] for r in flag], noise
        assert sum(r["num_kept"] for r in flag) < sum(r["num_kept"] for r in paper), noise


def test_beyond_retires_a_tenth_and_random_takes_its_measured_budget(mini_grid):
    specs = {(s.cell["noise"], s.cell["rule"]): s for s in suite_runs("beyond", (0,), miniature=True)}
    for noise in ("0%", "20%", "40%"):
        retire = _result(mini_grid, specs[(noise, "scan + retire 10%")])
        prep = [r for r in retire["metrics"] if r["phase"] == "prepare"]
        num_train = retire["summary"].get("num_samples") or retire["config"]["num_train"]
        assert prep and prep[0]["num_retired"] == int(0.10 * num_train), noise
        if noise != "0%":                                 # wrong captions planted: scored
            assert 0.0 <= prep[0]["retired_precision"] <= 1.0
        rnd = _result(mini_grid, specs[(noise, "random, retire budget")])
        share = retire["summary"]["realised_pruned_share"]
        assert rnd["derived"]["matched_share"] == share
        assert rnd["config"]["target_rate"] == share and rnd["config"]["pruning"] == "random"


def test_beyond_trains_the_persistence_rule_beside_paper_scan_and_random_at_its_budget(
        mini_grid):
    """Until the second preparation there is no run of two ill-matched ends, so a persistence
    run is paper SCAN's run with an empty ill-matched end: the same plans up to that first
    preparation, then D' holds the redundant end alone."""
    specs = {(s.cell["noise"], s.cell["rule"]): s for s in suite_runs("beyond", (0,),
                                                                       miniature=True)}
    for noise in ("0%", "20%", "40%"):
        persist = _result(mini_grid, specs[(noise, "scan + persistence 2")])
        paper = _result(mini_grid, specs[(noise, "scan")])
        assert persist["config"]["ill_persistence"] == 2 and paper["config"]["ill_persistence"] == 1
        first = next(i for i, r in enumerate(paper["metrics"]) if r["phase"] == "prepare")
        assert [r["num_kept"] for r in persist["metrics"][:first + 1]] == \
            [r["num_kept"] for r in paper["metrics"][:first + 1]], noise
        prep_p, prep_s = persist["metrics"][first], paper["metrics"][first]
        assert prep_p["phase"] == "prepare"
        assert 0 < prep_p["num_candidates"] < prep_s["num_candidates"], noise
        rnd = _result(mini_grid, specs[(noise, "random, persistence budget")])
        share = persist["summary"]["realised_pruned_share"]
        assert rnd["derived"]["matched_share"] == share
        assert rnd["config"]["target_rate"] == share and rnd["config"]["pruning"] == "random"


def test_beyond_redundant_control_at_clean_captions_only(mini_grid):
    """With clean captions the suite also trains the redundant end alone (SCAN without its
    ill-matched end, so no hard pair is pruned) and random at its measured budget; at 20% and
    40% noise it does not."""
    specs = suite_runs("beyond", (0,), miniature=True)
    cells = {(s.cell["noise"], s.cell["rule"]): s for s in specs}
    assert {n for n, r in cells if r.startswith(("redundant", "random, redundant"))} == {"0%"}
    redundant = _result(mini_grid, cells[("0%", "redundant")])
    paper = _result(mini_grid, cells[("0%", "scan")])
    assert redundant["config"]["pruning"] == "redundant"
    assert redundant["config"]["mismatch_share"] == paper["config"]["mismatch_share"] == 0.0
    prep_r, prep_s = ([r for r in run["metrics"] if r["phase"] == "prepare"][0]
                      for run in (redundant, paper))
    assert 0 < prep_r["num_candidates"] < prep_s["num_candidates"]  # one end of two
    share = redundant["summary"]["realised_pruned_share"]
    assert 0.0 < share < paper["summary"]["realised_pruned_share"]
    rnd = _result(mini_grid, cells[("0%", "random, redundant budget")])
    assert rnd["derived"]["matched_share"] == share
    assert rnd["config"]["target_rate"] == share and rnd["config"]["pruning"] == "random"


def test_beyond_retires_nearly_alone_at_40_percent_noise(mini_grid):
    """T = 100: after the one preparation a mutation epoch drops rho_cur(1, 100) < 0.001 of
    D' besides the retired set, so what is skipped is (almost) the retired set alone."""
    cells = {(s.cell["noise"], s.cell["rule"]): s
             for s in suite_runs("beyond", (0,), miniature=True)}
    alone = {(n, r) for n, r in cells if ", T 100" in r}
    assert alone == {("40%", "retire 10%, T 100"), ("40%", "retire 20%, T 100"),
                     ("40%", "random, retire 10%, T 100 budget"),
                     ("40%", "random, retire 20%, T 100 budget")}
    for share in (0.10, 0.20):
        run = _result(mini_grid, cells[("40%", f"retire {share:.0%}, T 100")])
        assert run["config"]["t_cos"] == 100 and run["config"]["retire_share"] == share
        rows = run["metrics"]
        first = next(i for i, r in enumerate(rows) if r["phase"] == "prepare")
        n = rows[first]["num_kept"]                       # a preparation trains on all N
        retired = rows[first]["num_retired"]
        assert retired == int(share * n)
        after = rows[first + 1]
        assert after["phase"] == "mutate"
        assert n - retired - 0.001 * after["num_candidates"] - 1 <= after["num_kept"] \
            <= n - retired
        rnd = _result(mini_grid, cells[("40%", f"random, retire {share:.0%}, T 100 budget")])
        assert rnd["config"]["pruning"] == "random" and rnd["config"]["t_cos"] != 100
        assert rnd["config"]["target_rate"] == run["summary"]["realised_pruned_share"]


def test_infobatch_prune_ratio_is_set_from_scans_measured_share(mini_grid):
    specs = suite_runs("clip-table", (0,), miniature=True)
    scan = _result(mini_grid, next(s for s in specs if s.rule == "scan"))
    info_spec = next(s for s in specs if s.rule == "infobatch")
    info = _result(mini_grid, info_spec)
    derived = info["derived"]
    share = scan["summary"]["realised_pruned_share"]
    assert derived["matched_share"] == share
    assert derived["below_mean_measured"]               # from SCAN's stored loss history
    expected = derive_mod.below_mean_fraction(Path(mini_grid) / "runs" / scan["run_id"])
    assert derived["below_mean_fraction"] == expected
    ratio, p = derive_mod.infobatch_ratio(share, 2, expected)
    assert info["config"]["infobatch_prune_ratio"] == derived["infobatch_prune_ratio"] == ratio
    assert ratio == pytest.approx(share * 2 / (expected * p))
    assert info["summary"]["realised_pruned_share"] > 0


def test_coreset_runs_train_on_subsets_of_the_coreset_size(mini_grid):
    specs = suite_runs("coreset", (0,), miniature=True)
    by_cell = {s.cell["subset"]: s for s in specs}
    scan_dir = Path(mini_grid) / "runs" / by_cell["source: scan"].run_id
    coreset = np.load(scan_dir / "coreset.npy")
    subsets = {}
    for name in ("scan", "random", "static"):
        spec = by_cell[f"{name} subset"]
        result = _result(mini_grid, spec)
        ids = np.load(Path(mini_grid) / "runs" / spec.run_id / "train_ids.npy")
        assert len(ids) == len(coreset) == result["summary"]["num_samples"]
        assert result["metrics"][0]["num_kept"] == len(coreset)
        subsets[name] = ids
    np.testing.assert_array_equal(subsets["scan"], coreset)
    assert not np.array_equal(subsets["random"], coreset)
    # the table counts a subset's saving against the full set it was cut from
    source = _result(mini_grid, by_cell["source: scan"])
    _, numbers = suite_table("coreset", mini_grid, (0,), miniature=True)
    saved = {r["cell"]["subset"]: r["stats"]["visits_saved_vs_full_set"]["mean"]
             for r in numbers["rows"]}
    full = source["summary"]["num_samples"]
    assert len(coreset) < full
    for name in ("scan", "random", "static"):
        assert saved[f"{name} subset"] == pytest.approx(1 - len(coreset) / full)
    assert saved["source: scan"] == pytest.approx(source["summary"]["realised_pruned_share"])


# -- resume and failures ----------------------------------------------------------------------
def test_a_half_finished_grid_resumes(tmp_path, fmnist_dir, capsys):
    """A finished run is not run again; a run stopped after epoch 0 resumes (in a worker
    process) and ends with the same plans and losses as a run that never stopped."""
    specs = [make_run("moco", 0, {"rule": rule}, miniature=True, pruning=rule)
             for rule in ("full", "scan")]
    done, half = specs
    execute(done, tmp_path, threads=1, data_dir=fmnist_dir)
    before = (tmp_path / "results" / f"{done.run_id}.json").read_text()
    mtime = (tmp_path / "results" / f"{done.run_id}.json").stat().st_mtime_ns
    execute(half, tmp_path, threads=1, data_dir=fmnist_dir, stop_after=1)
    assert load_result(tmp_path, half.run_id) is None
    assert [json.loads(x)["epoch"] for x in
            (tmp_path / "runs" / half.run_id / "metrics.jsonl").read_text().splitlines()] == [0]

    run_grid(specs, tmp_path, workers=1, threads=1, data_dir=fmnist_dir)
    out = capsys.readouterr().out
    assert "2 runs, 1 already done, 1 to run" in out and f"[1/1] {half.run_id} ok" in out
    assert (tmp_path / "results" / f"{done.run_id}.json").read_text() == before
    assert (tmp_path / "results" / f"{done.run_id}.json").stat().st_mtime_ns == mtime
    resumed = load_result(tmp_path, half.run_id)
    assert resumed["status"] == "ok" and resumed["resumed"] is True
    fresh = execute(half, tmp_path / "fresh", threads=1, data_dir=fmnist_dir)
    assert [r["epoch"] for r in resumed["metrics"]] == [0, 1]
    for a, b in zip(fresh["metrics"], resumed["metrics"]):
        assert (a["phase"], a["num_kept"], a["num_candidates"]) == \
            (b["phase"], b["num_kept"], b["num_candidates"])
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)

    run_grid(specs, tmp_path, workers=1, threads=1, data_dir=fmnist_dir)
    assert "2 runs, 2 already done, 0 to run" in capsys.readouterr().out


def test_a_killed_grid_stops_its_workers_and_resumes(tmp_path, fmnist_dir):
    """SIGTERM to the runner mid-run: its worker stops too (the run's lock is free, no JSON),
    and the next invocation resumes the run from its last completed epoch."""
    base = make_run("moco", 0, {"rule": "scan"}, miniature=True, pruning="scan")
    spec = RunSpec(base.trainer, base.preset, {**base.overrides, "epochs": 8}, base.cell)
    (tmp_path / "grid.json").write_text(json.dumps([spec.to_dict()]))
    code = ("import json, sys; from pathlib import Path; "
            "from reference_trainers.experiments.runner import run_grid; "
            "from reference_trainers.experiments.suites import RunSpec; "
            f"specs = [RunSpec.from_dict(d) for d in json.loads(Path({str(tmp_path)!r}).joinpath('grid.json').read_text())]; "
            f"run_grid(specs, {str(tmp_path)!r}, workers=1, threads=1, data_dir={fmnist_dir!r})")
    runner = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[2])
    checkpoints = tmp_path / "runs" / spec.run_id / "checkpoints"
    deadline = time.monotonic() + 60
    while not (checkpoints.exists() and list(checkpoints.glob("epoch_*.pt"))):
        assert time.monotonic() < deadline and runner.poll() is None, "no epoch finished"
        time.sleep(0.05)
    runner.send_signal(signal.SIGTERM)
    runner.wait(timeout=30)
    with run_lock(tmp_path, spec.run_id) as held:
        assert held                                     # the worker is gone with its runner
    assert load_result(tmp_path, spec.run_id) is None
    rows = (tmp_path / "runs" / spec.run_id / "metrics.jsonl").read_text().splitlines()
    assert 1 <= len(rows) < 8
    run_grid([spec], tmp_path, workers=0, threads=1, data_dir=fmnist_dir)
    result = load_result(tmp_path, spec.run_id)
    assert result["status"] == "ok" and result["resumed"] is True
    assert [r["epoch"] for r in result["metrics"]] == list(range(8))


def test_a_run_held_by_another_process_is_left_to_it(tmp_path, fmnist_dir):
    spec = make_run("clip", 0, {"rule": "full"}, miniature=True, pruning="full")
    with run_lock(tmp_path, spec.run_id) as held:
        assert held
        assert execute(spec, tmp_path, threads=1, data_dir=fmnist_dir)["status"] == "busy"
    assert load_result(tmp_path, spec.run_id) is None
    assert execute(spec, tmp_path, threads=1, data_dir=fmnist_dir)["status"] == "ok"


def test_failures_are_recorded_and_the_grid_goes_on(tmp_path, fmnist_dir):
    bad = make_run("clip", 0, {"rule": "scan"}, miniature=True, pruning="scan", target_rate=0.9)
    child = make_run("clip", 0, {"rule": "infobatch"}, miniature=True, pruning="infobatch",
                     derive={"kind": "infobatch_budget", "source": bad.run_id})
    good = make_run("clip", 0, {"rule": "full"}, miniature=True, pruning="full")
    results = run_grid([bad, child, good], tmp_path, workers=0, threads=1, data_dir=fmnist_dir)
    by_id = {r["run_id"]: r for r in results}
    assert by_id[bad.run_id]["status"] == "failed"
    assert by_id[bad.run_id]["error"].startswith("ScanTargetUnreachableError: target_rate=0.9")
    assert by_id[child.run_id]["status"] == "failed"
    assert f"source run {bad.run_id} failed" in by_id[child.run_id]["error"]
    assert by_id[good.run_id]["status"] == "ok"


# -- tables -----------------------------------------------------------------------------------
def test_table_numbers_are_mean_and_std_of_the_run_jsons(tmp_path, fmnist_dir):
    seeds = (0, 1, 2)
    specs = suite_runs("moco-table", seeds, miniature=True)
    run_grid(specs, tmp_path, workers=0, threads=1, data_dir=fmnist_dir)
    text, numbers = suite_table("moco-table", tmp_path, seeds, miniature=True)
    for row in numbers["rows"]:
        jsons = [_result(tmp_path, s) for s in specs if s.cell == row["cell"]]
        assert row["ok"] == len(jsons) == 3
        for col in SUITES["moco-table"].columns:
            values = [j["summary"][col] for j in jsons]
            assert row["stats"][col]["mean"] == pytest.approx(statistics.fmean(values))
            assert row["stats"][col]["std"] == pytest.approx(statistics.stdev(values))
        share = row["stats"]["realised_pruned_share"]
        assert f"{share['mean']:.1%} ± {share['std'] * 100:.1f}" in text
        probe = row["stats"]["linear_probe_top1"]
        assert f"{probe['mean']:.4f} ± {probe['std']:.4f}" in text
    assert cli(["table", "moco-table", "--miniature", "--seeds", "0", "1", "2",
                "--out", str(tmp_path)]) == 0
    assert (tmp_path / "tables" / "moco-table-mini.md").exists()


# -- candidate quality ------------------------------------------------------------------------
def test_candidate_quality_matches_a_hand_computation():
    mismatched = np.array([1, 1, 0, 0, 0, 0, 0, 0], bool)
    duplicate_of = np.array([-1, -1, -1, -1, 0, 1, -1, -1])
    q = candidate_quality(np.array([0, 2, 3]), np.array([4, 6]), mismatched=mismatched,
                          duplicate_of=duplicate_of)
    assert q == {"ill_recall": 0.5, "ill_precision": 1 / 3, "num_mismatched": 2,
                 "redundant_recall": 0.5, "redundant_precision": 0.5, "num_duplicates": 2,
                 "num_ill": 3, "num_redundant": 2}
    assert candidate_quality(np.array([], int), np.array([1]), mismatched=mismatched) == \
        {"ill_recall": 0.0, "ill_precision": None, "num_mismatched": 2, "num_ill": 0,
         "num_redundant": 1}
    assert candidate_quality(np.array([0]), np.array([1]), mismatched=np.zeros(8, bool)) == {}
    assert candidate_churn(np.array([0, 1, 2]), np.array([1, 2, 3, 4])) == \
        {"churn_kept": 2, "churn_entered": 2, "churn_left": 1, "churn_jaccard": 0.4}


def _train_planted(pruner, stats, mismatched, batch, rng, epochs=5):
    """Five epochs of a pruner on random losses, the planted wrong captions' 3 higher; the
    PreparationStats row and the pruner's state after each epoch."""
    n, rows, states = len(mismatched), [], []
    for epoch in range(epochs):
        plan = pruner.plan_epoch(epoch)
        kept = np.flatnonzero(np.unpackbits(plan.drop_bits, count=n, bitorder="little") == 0) \
            if plan.drop_bits is not None else np.arange(n)
        for start in range(0, len(kept), batch):
            ids = kept[start:start + batch]
            pruner.record(ids, rng.random((2, len(ids))) + 3.0 * mismatched[ids])
        pruner.end_epoch()
        rows.append(stats())
        states.append(pruner.state_dict())
    return rows, states


def test_preparation_stats_follow_the_pruners_candidates_and_survive_a_resume():
    n, batch = 64, 16
    rng = np.random.default_rng(1)
    mismatched = np.zeros(n, bool)
    mismatched[rng.choice(n, 10, replace=False)] = True
    config = ScanConfig(warmup_epochs=0, t_cos=1, seed=3)
    pruner = ScanPruner(n, 2, config)
    stats = PreparationStats(pruner, mismatched=mismatched)
    rows, states = _train_planted(pruner, stats, mismatched, batch, rng)
    assert [bool(r) for r in rows] == [True, False, True, False, True]
    ill, red = pruner.candidate_ids("ill_matched"), pruner.candidate_ids("redundant")
    hits = int(mismatched[ill].sum())
    assert rows[4]["ill_recall"] == hits / 10 and rows[4]["ill_precision"] == hits / len(ill)
    assert rows[4]["ill_recall"] > 0.5                   # planted losses are the highest
    assert "churn_jaccard" not in rows[0] and "churn_jaccard" in rows[2]
    # Resumed after epoch 3 (D' of epoch 2 restored): the same churn at epoch 4.
    resumed = ScanPruner(n, 2, config)
    resumed.load_state_dict(states[3])
    again = PreparationStats(resumed, mismatched=mismatched)
    np.testing.assert_array_equal(again._previous, ScanPruner.from_state_dict(states[2])
                                  .candidate_ids("both"))
    assert {k: v for k, v in rows[4].items() if k.startswith("churn")} == \
        candidate_churn(again._previous, pruner.candidate_ids("both"))
    assert red.size and set(ill) | set(red) == set(pruner.candidate_ids("both"))


def test_preparation_stats_score_the_retired_set_under_retire_share():
    """Issue 20's rule (c): each preparation row counts the samples retired so far and scores
    them against the planted wrong captions; without the rule the keys are absent."""
    n, batch = 200, 20
    rng = np.random.default_rng(4)
    mismatched = np.zeros(n, bool)
    mismatched[rng.choice(n, 30, replace=False)] = True
    rows = {}
    for share in (0.0, 0.05):
        pruner = ScanPruner(n, 2, ScanConfig(warmup_epochs=0, t_cos=1, seed=3, retire_share=share))
        stats = PreparationStats(pruner, mismatched=mismatched)
        rows[share], _ = _train_planted(pruner, stats, mismatched, batch, rng)
        retired = pruner.candidate_ids("retired")
        assert len(retired) == int(share * n)
        if share:
            last = rows[share][4]
            assert last["num_retired"] == 10
            assert last["retired_precision"] == mismatched[retired].sum() / 10 == 1.0
            assert last["retired_recall"] == 10 / 30
            assert rows[share][1] == {}  # a mutation epoch's row has no quality keys
    assert all("num_retired" not in row for row in rows[0.0])


def test_quality_rows_of_a_miniature_run_match_its_store(mini_grid):
    spec = next(s for s in suite_runs("quality", (0,), miniature=True)
                if s.cell == {"noise": "40%", "scope": "global"})
    result = _result(mini_grid, spec)
    prep = next(r for r in result["metrics"] if r["phase"] == "prepare")
    from_store = store_quality(Path(mini_grid) / "runs" / spec.run_id, epoch=prep["epoch"])
    for key in ("ill_recall", "ill_precision", "redundant_recall", "redundant_precision",
                "num_ill", "num_redundant", "num_mismatched", "num_duplicates"):
        assert prep[key] == from_store[key], key
    _, numbers = suite_table("quality", mini_grid, (0,), miniature=True)
    q = next(r for r in numbers["quality"] if r["cell"] == spec.cell)
    assert q["stats"]["ill_recall"]["mean"] == prep["ill_recall"]


# -- report -----------------------------------------------------------------------------------
def _valid_png(path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    image = plt.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, fmnist_dir):
    from reference_trainers.clip import train as clip_train

    out = tmp_path_factory.mktemp("tiny")
    args = ["--preset", "cpu-tiny", "--data-dir", fmnist_dir, "--num-train", "256",
            "--num-test", "200", "--batch-size", "64", "--epochs", "5", "--t-cos", "1",
            "--scan-warmup-epochs", "0", "--mismatch-share", "0.2", "--duplicate-share", "0.1",
            "--loss-history", "float16", "--eval-every", "2", "--threads", "1", "--quiet"]
    assert clip_train.main(args + ["--out", str(out)]) == 0
    return out


def test_report_draws_valid_pngs_with_the_runs_numbers(tiny_run, tmp_path):
    result = report(tiny_run, tmp_path)
    assert result["not_drawn"] == {}
    for name, fig in result["figures"].items():
        _valid_png(tmp_path / fig["file"])
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["figures"].keys() == result["figures"].keys()
    rows = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((tiny_run / "summary.json").read_text())
    store = LossStore.open(tiny_run / "scan.zarr", LossStore.read_meta(tiny_run / "scan.zarr"),
                           writable=False)
    n = 256
    figs = saved["figures"]
    # loss histograms: the store's per-preparation losses, the cut-offs at the rho quantiles
    panels = figs["loss_histograms"]["data"]["panels"]
    assert [p["epoch"] for p in panels] == store.history_epochs() == [0, 2, 4]
    for p in panels:
        loss = view_mean(store.read_history(p["epoch"]))
        counts, edges = np.histogram(loss, bins=len(p["counts"]))
        assert p["counts"] == counts.tolist() and sum(p["counts"]) == n == p["num_seen"]
        np.testing.assert_allclose(p["edges"], edges)
        assert p["low_cutoff"] == pytest.approx(np.quantile(loss, 0.3))
        assert p["high_cutoff"] == pytest.approx(np.quantile(loss, 0.7))
    # pruned share per epoch and its schedule, from metrics.jsonl
    share = figs["pruned_share"]["data"]
    assert share["pruned_share"] == pytest.approx([1 - r["num_kept"] / n for r in rows])
    assert share["schedule"] == pytest.approx(
        [r["rho_cur"] * r["num_candidates"] / n if r["phase"] == "mutate" else 0 for r in rows])
    assert share["realised_saving"][-1] == summary["realised_pruned_share"]
    # churn of the last preparation against the two snapshots the store still holds
    churn = figs["candidate_churn"]["data"]
    assert churn["epochs"] == [2, 4]
    old = np.union1d(*snapshot_candidates(tiny_run, 3)[1:])
    new = np.union1d(*snapshot_candidates(tiny_run, 4)[1:])
    last = candidate_churn(old, new)
    assert (churn["kept"][-1], churn["entered"][-1], churn["left"][-1]) == \
        (last["churn_kept"], last["churn_entered"], last["churn_left"])
    # curves and compute saved
    curves = figs["curves"]["data"]
    assert curves["train_loss"] == [r["train_loss"] for r in rows]
    assert curves["zero_shot_top1"]["epochs"] == [r["epoch"] for r in rows
                                                  if r.get("zero_shot_top1") is not None]
    saved_compute = figs["compute_saved"]["data"]
    assert saved_compute["sample_visits"] == summary["sample_visits"]
    assert saved_compute["realised_pruned_share"] == summary["realised_pruned_share"]
    assert 1 - saved_compute["sample_visits"] / saved_compute["full_visits"] == \
        pytest.approx(summary["realised_pruned_share"])


def test_report_says_which_figures_it_cannot_draw(mini_grid, tmp_path, capsys):
    spec = next(s for s in suite_runs("clip-table", (0,), miniature=True) if s.rule == "full")
    run_dir = Path(mini_grid) / "runs" / spec.run_id
    assert cli(["report", str(run_dir), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "not drawn loss_histograms: the run kept no loss history" in out
    assert "not drawn candidate_churn" in out
    for name in ("pruned_share", "curves", "compute_saved"):
        _valid_png(tmp_path / f"{name}.png")


def test_suite_figures_are_valid_pngs(mini_grid):
    from reference_trainers.experiments.figures import suite_figures

    drawn = suite_figures("quality", mini_grid, (0,), miniature=True)
    assert set(drawn) == {"headline", "accuracy_vs_pruned", "quality"}
    folder = Path(mini_grid) / "figures" / "quality-mini"
    for fig in drawn.values():
        _valid_png(folder / fig["file"])
    assert cli(["list"]) == 0
    # the quality panels plot each run's own preparation-epoch numbers (one seed: mean = value)
    plotted = json.loads((folder / "figures.json").read_text())["quality"]["series"]
    for spec in suite_runs("quality", (0,), miniature=True):
        preps = [r for r in _result(mini_grid, spec)["metrics"] if r["phase"] == "prepare"]
        assert preps
        for key in ("ill_recall", "ill_precision", "redundant_recall", "redundant_precision"):
            line = plotted[key][" / ".join(spec.cell.values())]
            assert line["k"] == list(range(1, len(preps) + 1)), key
            assert line["mean"] == pytest.approx([r[key] for r in preps]), key


def test_accuracy_vs_pruned_has_a_panel_per_regime_and_a_colour_per_rule(mini_grid):
    """The regimes figure: one panel per regime, each cell drawn once in its own panel, and
    the legend names each rule once (it named every cell, 30 entries with repeated colours)."""
    from reference_trainers.experiments.figures import split_cell, suite_figures

    drawn = suite_figures("regimes", mini_grid, (0,), miniature=True)["accuracy_vs_pruned"]
    _valid_png(Path(mini_grid) / "figures" / "regimes-mini" / drawn["file"])
    cells = [s.cell for s in suite_runs("regimes", (0,), miniature=True)]
    drawn_cells = {tuple(c.values()) for c in cells
                   if " / ".join(c.values()) in drawn["labels"]}
    assert drawn["panels"] == list(dict.fromkeys(c["regime"] for c in cells
                                                 if tuple(c.values()) in drawn_cells))
    assert drawn["series"] == list(dict.fromkeys(c["rule"] for c in cells
                                                 if tuple(c.values()) in drawn_cells))
    assert len(drawn["series"]) <= 10                 # distinct colours C0..C9
    assert split_cell({"regime": "noise 20%", "rule": "scan"}, SUITES["regimes"]) == \
        ("noise 20%", "scan")
    assert split_cell({"rule": "scan"}, SUITES["clip-table"]) == ("", "scan")
    assert split_cell({"noise": "40%", "scope": "global"}, SUITES["quality"]) == ("40%", "global")


def test_the_cli_run_skips_finished_runs_and_writes_table_and_figures(mini_grid, fmnist_dir,
                                                                       capsys):
    assert cli(["run", "moco-table", "--miniature", "--workers", "0", "--threads", "1",
                "--data-dir", fmnist_dir, "--out", str(mini_grid)]) == 0
    out = capsys.readouterr().out
    assert "3 runs, 3 already done, 0 to run" in out and "### 2. MoCo v3" in out
    assert (Path(mini_grid) / "tables" / "moco-table-mini.md").read_text() in out
    _valid_png(Path(mini_grid) / "figures" / "moco-table-mini" / "moco-table-headline.png")


# -- the full suites (hours on 2 cores) ---------------------------------------------------------
# Opt-in twice: marked slow, and only with SCAN_FULL_SUITES=1, so a plain `pytest` of this file
# never starts hours of training by accident (docs/experiments.md: the CLI runs them).
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SCAN_FULL_SUITES") != "1",
                    reason="the full suites take hours: set SCAN_FULL_SUITES=1 and run -m slow")
@pytest.mark.skipif(not Path(DEFAULT_FASHION_MNIST_DIR).is_dir(),
                    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
@pytest.mark.parametrize("name", list(SUITES))
def test_full_suite(name, tmp_path):
    results = run_grid(suite_runs(name), tmp_path, workers=1, threads=2)
    failed = [r for r in results if r.get("status") != "ok"]
    assert all("target_rate" in r["spec"]["overrides"] for r in failed), failed


@pytest.mark.parametrize("kind", ["infobatch_budget", "coreset"])
def test_a_source_known_only_by_its_json_is_refused_by_name(tmp_path, kind):
    # a JSON copied from another machine (docs/results/runs) without the run folder behind it
    scan = suite_runs("clip-table", (0,))[5]
    assert scan.rule == "scan"
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / f"{scan.run_id}.json").write_text(json.dumps(
        {"run_id": scan.run_id, "status": "ok", "config": {"epochs": 12},
         "summary": {"realised_pruned_share": 0.2}}))
    derive = {"kind": kind, "source": scan.run_id}
    if kind == "coreset":
        derive.update(subset="scan", static_source=scan.run_id)
    spec = RunSpec("clip", "cpu-fmnist", {"pruning": "full", "seed": 0}, derive=derive)
    with pytest.raises(derive_mod.DerivationError, match=scan.run_id):
        derive_mod.derive(spec, tmp_path)


def test_where_selects_cells_and_brings_the_sources_of_derived_runs():
    specs = suite_runs("regimes", (0, 1))
    rates = select_cells(specs, ["regime=target 70%", "regime=target 50%", "rule=scan"])
    assert {(s.cell["regime"], s.rule, s.seed) for s in rates} == {
        (f"target {r}%", "scan", seed) for r in (50, 70) for seed in (0, 1)}
    table = suite_runs("clip-table", (0,))
    info = select_cells(table, ["rule=infobatch"])
    assert [s.rule for s in info] == ["infobatch", "scan"]      # its SCAN source comes along
    assert info[1].run_id == info[0].derive["source"]
    core = select_cells(suite_runs("coreset", (0,)), ["subset=static subset"])
    assert sorted(s.rule for s in core) == ["full", "scan", "static"]
    for bad, named in ((["rule"], "KEY=VALUE"), (["colour=red"], "rule"),
                       (["rule=bogus"], "'scan'")):
        with pytest.raises(ValueError, match=named):
            select_cells(table, bad)


def test_run_where_rejects_an_unknown_cell_before_running(tmp_path, capsys):
    assert cli(["run", "clip-table", "--out", str(tmp_path), "--where", "rule=bogus"]) == 2
    assert "no cell holds 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_t_table_holds_students_two_sided_five_percent_points():
    from reference_trainers.experiments.tables import T_CRIT_05
    import math
    for df, crit in enumerate(T_CRIT_05, start=1):
        # P(|T| > crit) for Student's t with df degrees of freedom, by integrating its density
        x = np.linspace(0.0, crit, 200_001)
        c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
        inside = 2 * np.trapezoid(c * (1 + x ** 2 / df) ** (-(df + 1) / 2), x)
        assert 1 - inside == pytest.approx(0.05, abs=2e-4), df


def _fake_results(root, values_by_rule, probe_by_rule=None):
    """Result JSONs for suite 1's cells with the given zero-shot top-1 per rule and seed (and
    linear-probe top-1: the same values unless given)."""
    (root / "results").mkdir(parents=True, exist_ok=True)
    for spec in suite_runs("clip-table", (0, 1, 2)):
        value = values_by_rule.get(spec.rule, [None] * 3)[spec.seed]
        if value is None:
            continue
        probe = (probe_by_rule or values_by_rule)[spec.rule][spec.seed]
        summary = {"zero_shot_top1": value, "linear_probe_top1": probe,
                   "realised_pruned_share": 0.2, "wall_seconds": 100.0}
        (root / "results" / f"{spec.run_id}.json").write_text(json.dumps(
            {"run_id": spec.run_id, "status": "ok", "summary": summary, "metrics": []}))


def test_table_pairs_rows_with_the_reference_by_seed(tmp_path):
    scan = [0.80, 0.81, 0.82]                                 # seed spread 0.01
    _fake_results(tmp_path, {"scan": scan,
                             "random": [v - d for v, d in zip(scan, (0.004, 0.005, 0.006))],
                             "full": [0.805, 0.815, 0.825],
                             "static": [0.81, 0.80, 0.82]})
    text, numbers = suite_table("clip-table", tmp_path)
    rows = {r["cell"]["rule"]: r for r in numbers["rows"]}
    random = rows["random"]["vs_reference"]
    assert random["beyond"] is False                          # unpaired: inside the spread
    assert random["paired"]["significant"] is True            # paired: every seed lower
    assert random["paired"]["mean"] == pytest.approx(-0.005)
    assert random["paired"]["t"] == pytest.approx(-0.005 / (0.001 / 3 ** 0.5))
    full = rows["full"]["vs_reference"]["paired"]             # +0.005 on every seed
    assert full["t"] > 1e6 and full["significant"] is True
    static = rows["static"]["vs_reference"]["paired"]
    assert static["significant"] is False and static["mean"] == pytest.approx(0, abs=1e-12)
    assert rows["scan"]["vs_reference"] is None               # the reference itself
    assert rows["ill"]["vs_reference"] is None                # no runs
    line = next(l for l in text.splitlines() if l.startswith("| random"))
    assert "-0.0050 (within)" in line and "t -8.7 (p<.05, n 3)" in line


def test_table_pairs_the_secondary_metric_in_its_own_column(tmp_path):
    scan = [0.80, 0.81, 0.82]
    _fake_results(tmp_path, {"scan": scan, "random": scan},           # zero-shot: identical
                  {"scan": [0.85, 0.86, 0.87], "random": [0.853, 0.862, 0.874]})
    text, numbers = suite_table("clip-table", tmp_path)
    vs = next(r for r in numbers["rows"] if r["cell"]["rule"] == "random")["vs_reference"]
    assert vs["paired"]["mean"] == pytest.approx(0.0, abs=1e-12)
    probe = vs["secondary"]
    deltas = [0.003, 0.002, 0.004]
    assert probe["mean"] == pytest.approx(np.mean(deltas))
    assert probe["t"] == pytest.approx(np.mean(deltas) / (np.std(deltas, ddof=1) / 3 ** 0.5))
    assert probe["significant"] is True and probe["n"] == 3
    assert probe["half_width_95"] == pytest.approx(4.303 * np.std(deltas, ddof=1) / 3 ** 0.5)
    header, _, *body = text.strip().splitlines()[2:]
    assert header.rstrip(" |").endswith("linear probe top-1, paired by seed")
    line = next(l for l in body if l.startswith("| random"))
    assert line.rstrip(" |").endswith("+0.0030 ± 0.0010, t +5.2 (p<.05, n 3)")


def test_each_target_rate_has_a_full_data_run_of_as_many_fewer_epochs():
    specs = [s for s in suite_runs("regimes", (0,)) if s.cell["regime"].startswith("target")]
    shorter = {s.cell["regime"]: s for s in specs if s.rule == "full"}
    assert {k: v.overrides["epochs"] for k, v in shorter.items()} == {
        "target 30%": 8, "target 50%": 6, "target 70%": 4}
    for regime, spec in shorter.items():
        rate = int(regime.split()[1].rstrip("%")) / 100
        saved = 1 - spec.overrides["epochs"] / 12
        assert abs(saved - rate) <= 1 / 24 + 1e-12          # the nearest whole epoch count
        assert spec.cell["rule"] == f"full, {spec.overrides['epochs']} of 12 ep"
        assert "target_rate" not in spec.overrides          # plain full-data training
        scan = next(s for s in specs if s.cell == {"regime": regime, "rule": "scan"})
        assert {k: v for k, v in spec.overrides.items() if k not in ("epochs", "pruning")} == \
            {k: v for k, v in scan.overrides.items()
             if k not in ("pruning", "target_rate", "t_cos", "scan_warmup_epochs", "epochs")}


def test_the_miniature_keeps_the_train_shorter_runs_shorter_than_full_data():
    # Shrunk to the same epoch count they would be the rates' full-data run under other names.
    specs = suite_runs("regimes", (0,), miniature=True)
    full = next(s for s in specs if s.cell == {"regime": "rates", "rule": "full"})
    shorter = [s for s in specs if s.rule == "full" and s.cell["rule"] != "full"]
    assert len(shorter) == 3
    for spec in shorter:
        assert spec.overrides["epochs"] < full.overrides["epochs"]
        assert spec.run_id != full.run_id


def test_paired_figure_plots_the_per_seed_differences(tmp_path):
    from reference_trainers.experiments.figures import suite_figures
    scan = [0.80, 0.81, 0.82]
    _fake_results(tmp_path, {"scan": scan, "random": [0.795, 0.805, 0.813],
                             "full": [0.81, 0.82, 0.83]})
    drawn = suite_figures("clip-table", tmp_path)
    paired = drawn["paired"]
    _valid_png(tmp_path / "figures" / "clip-table" / paired["file"])
    by_label = dict(zip(paired["labels"], zip(paired["means"], paired["half_widths_95"])))
    assert set(by_label) == {"random", "full"}                # not SCAN against itself
    deltas = [-0.005, -0.005, -0.007]
    mean, half = by_label["random"]
    assert mean == pytest.approx(np.mean(deltas))
    assert half == pytest.approx(4.303 * np.std(deltas, ddof=1) / 3 ** 0.5)
    assert by_label["full"][0] == pytest.approx(0.01)


def test_table_where_keeps_only_the_matching_rows(tmp_path, capsys):
    _fake_results(tmp_path, {"scan": [0.80, 0.81, 0.82], "random": [0.79, 0.80, 0.81],
                             "full": [0.81, 0.82, 0.83]})
    text, numbers = suite_table("clip-table", tmp_path, where=["rule=scan", "rule=random"])
    assert sorted(r["cell"]["rule"] for r in numbers["rows"]) == ["random", "scan"]
    assert numbers["where"] == ["rule=scan", "rule=random"]
    assert cli(["table", "clip-table", "--out", str(tmp_path), "--where", "rule=full"]) == 0
    assert (tmp_path / "tables" / "clip-table-where.md").exists()
    assert not (tmp_path / "tables" / "clip-table.md").exists()
    assert cli(["table", "clip-table", "--out", str(tmp_path), "--where", "noise=9%"]) == 2
    assert "no cell has the key 'noise'" in capsys.readouterr().err


def test_table_against_pairs_every_row_with_the_row_it_names(tmp_path, capsys):
    scan = [0.80, 0.81, 0.82]
    full = [0.806, 0.818, 0.821]
    _fake_results(tmp_path, {"scan": scan, "full": full, "random": [0.79, 0.80, 0.81]})
    text, numbers = suite_table("clip-table", tmp_path, against="full")
    rows = {r["cell"]["rule"]: r for r in numbers["rows"]}
    assert rows["full"]["vs_reference"] is None                 # the new reference itself
    deltas = [a - b for a, b in zip(scan, full)]
    paired = rows["scan"]["vs_reference"]["paired"]
    assert paired["mean"] == pytest.approx(np.mean(deltas))
    assert paired["t"] == pytest.approx(np.mean(deltas) / (np.std(deltas, ddof=1) / 3 ** 0.5))
    assert rows["random"]["vs_reference"]["paired"]["n"] == 3
    assert numbers["against"] == "full"
    assert "zero-shot top-1 vs full" in text.splitlines()[2]
    # the default reference (SCAN) is unchanged, and the CLI writes its own files for it
    _, default = suite_table("clip-table", tmp_path)
    assert next(r for r in default["rows"] if r["cell"]["rule"] == "scan")["vs_reference"] is None
    assert cli(["table", "clip-table", "--out", str(tmp_path), "--against", "full"]) == 0
    assert (tmp_path / "tables" / "clip-table-vs-full.md").exists()
    assert not (tmp_path / "tables" / "clip-table.md").exists()
    assert cli(["table", "clip-table", "--out", str(tmp_path), "--against", "fulll"]) == 2
    err = capsys.readouterr().err
    assert "no rule of suite 'clip-table' is 'fulll'" in err and "'full'" in err


def test_table_preparations_adds_the_candidate_quality_per_preparation(mini_grid):
    text, numbers = suite_table("clip-table", mini_grid, (0,), miniature=True,
                                preparations=True)
    assert "Candidate quality per preparation epoch" in text
    prepared = {r["cell"]["rule"] for r in numbers["quality"]}
    assert "scan" in prepared
    plain, _ = suite_table("clip-table", mini_grid, (0,), miniature=True)
    assert "Candidate quality" not in plain
