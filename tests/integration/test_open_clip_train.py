"""open_clip_train 3.3.0 patched with --scan (adapters/torch/open_clip_train.patch), run for real.

The installed open_clip_train is copied, the patch applied to the copy (no offset, no fuzz),
and `python -m open_clip_train.main` trains a tiny model config (tests/integration/tiny-clip)
for 6 epochs on 2 webdataset shards of Fashion-MNIST with SCAN: 2 warm-up epochs, one
preparation epoch, three mutation epochs. Then: what open_clip logs equals what the pruner
stored, the LR schedule reaches its end, and a run stopped after 3 epochs and resumed with
`--resume latest` ends exactly where the uninterrupted run ends.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

open_clip_train = pytest.importorskip("open_clip_train", reason="needs .venv-openclip")
torch = pytest.importorskip("torch")

from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR  # noqa: E402
from scan_core import LossStore  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(DEFAULT_FASHION_MNIST_DIR).is_dir(),
                       reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"),
]

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "tests" / "integration" / "tiny-clip"
NUM_SAMPLES, BATCH, EPOCHS, LR = 512, 32, 6, 1e-3
PHASES = ["warmup", "warmup", "prepare", "mutate", "mutate", "mutate"]


@pytest.fixture(scope="module")
def patched(tmp_path_factory) -> Path:
    """A copy of the installed open_clip_train with the patch applied; put it first on
    PYTHONPATH so `python -m open_clip_train.main` runs the patched copy."""
    site = tmp_path_factory.mktemp("patched")
    shutil.copytree(Path(open_clip_train.__file__).parent, site / "open_clip_train",
                    ignore=shutil.ignore_patterns("__pycache__"))
    from adapters.torch.open_clip_train import main as apply_main

    done = subprocess.run([sys.executable, "-m", "adapters.torch.open_clip_train",
                           "--target", str(site)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("patching file") == 2, done.stdout
    assert "offset" not in done.stdout and "fuzz" not in done.stdout, done.stdout
    assert apply_main(["--target", str(site), "--dry-run"]) == 2  # refused a second time
    return site


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from reference_trainers.common.corpora import make_shards

    out = tmp_path_factory.mktemp("shards")
    assert make_shards.main(["--from-fashion-mnist", "--num-samples", str(NUM_SAMPLES),
                             "--samples-per-shard", str(NUM_SAMPLES // 2), "--out",
                             str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    return out


def _command(patched: Path, shards: Path, logs: Path, *extra: str) -> tuple[list[str], dict]:
    cmd = [sys.executable, "-m", "open_clip_train.main",
           "--train-data", str(shards / "shard-{000000..000001}.tar"),
           "--train-num-samples", str(NUM_SAMPLES), "--dataset-type", "webdataset",
           "--model", f"local-dir:{MODEL}", "--batch-size", str(BATCH), "--epochs", str(EPOCHS),
           "--lr", str(LR), "--warmup", "2", "--workers", "1", "--seed", "3",
           "--precision", "fp32", "--device", "cpu", "--log-every-n-steps", "1",
           "--save-frequency", "1", "--logs", str(logs), "--name", "run",
           "--report-to", "tensorboard", "--scan", "--scan-warmup-epochs", "2", *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(patched), str(ROOT)]),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return cmd, env


def _train(patched, shards, logs, *extra) -> Path:
    cmd, env = _command(patched, shards, logs, *extra)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return logs / "run"


@pytest.fixture(scope="module")
def full_run(patched, shards, tmp_path_factory) -> Path:
    return _train(patched, shards, tmp_path_factory.mktemp("full"))


@pytest.fixture(scope="module")
def resumed_run(patched, shards, tmp_path_factory) -> Path:
    """Stopped (SIGKILL) once epoch 3 has started, i.e. after epoch_3.pt was saved; then
    `--resume latest` with the same command."""
    logs = tmp_path_factory.mktemp("resumed")
    cmd, env = _command(patched, shards, logs)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    log = logs / "run" / "out.log"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and "Start epoch 3" in log.read_text():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped: " + proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (logs / "run" / "checkpoints" / "epoch_6.pt").exists()
    return _train(patched, shards, logs, "--resume", "latest")


def _scan_lines(run: Path) -> dict[int, dict]:
    pattern = re.compile(r"SCAN epoch (\d+): phase (\w+), pruned (\d+) of (\d+) samples "
                         r"\(share ([0-9.]+)\)")
    rows = {}
    for match in pattern.finditer((run / "out.log").read_text()):
        rows[int(match[1])] = {"phase": match[2], "num_pruned": int(match[3]),
                               "num_samples": int(match[4]), "share": float(match[5])}
    return rows


def _store_log(run: Path) -> list[dict]:
    """The epoch log of the store's newest snapshot, read-only (docs/store.md)."""
    store = LossStore.open(run / "scan.zarr", LossStore.read_meta(run / "scan.zarr"),
                           writable=False)
    return store.load_latest()["log"]


def _lrs(run: Path) -> list[tuple[int, float]]:
    return [(int(e), float(lr)) for e, lr in
            re.findall(r"Train Epoch: (\d+) .*? LR: ([0-9.]+)", (run / "out.log").read_text())]


def test_scan_runs_warmup_preparation_and_mutation_and_logs_the_pruners_count(full_run):
    log = _store_log(full_run)
    assert [row["phase"] for row in log] == PHASES
    logged = _scan_lines(full_run)
    assert sorted(logged) == list(range(EPOCHS))
    for row in log:
        line = logged[row["epoch"]]
        assert line["phase"] == row["phase"]
        assert line["num_samples"] == NUM_SAMPLES
        assert line["num_pruned"] == NUM_SAMPLES - row["num_kept"]
        assert line["share"] == pytest.approx(row["pruned_share"], abs=1e-6)
    pruned = [logged[e]["num_pruned"] for e in range(EPOCHS)]
    assert pruned[:3] == [0, 0, 0] and 0 < pruned[3] < pruned[4] < pruned[5]  # rho 1/4, 3/4, 1
    assert pruned[5] == log[5]["num_candidates"] > 0  # rho_cur 1 drops all of D'
    coreset = json.loads((full_run / "scan-coreset.json").read_text())
    assert len(coreset["ids"]) == NUM_SAMPLES - log[-1]["num_candidates"]
    assert all(shard.endswith(".tar") for shard, _ in coreset["keys"])


def test_tensorboard_holds_the_pruned_share_of_every_epoch(full_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(full_run / "tensorboard")).Reload()
    shares = {e.step: e.value for e in events.Scalars("scan/pruned_share")}
    log = _store_log(full_run)
    assert sorted(shares) == list(range(EPOCHS))
    for row in log:
        assert shares[row["epoch"]] == pytest.approx(row["pruned_share"], abs=1e-6)


def test_pruned_epochs_are_shorter_and_the_lr_schedule_reaches_its_end(full_run):
    lrs = _lrs(full_run)
    steps = {e: sum(1 for ep, _ in lrs if ep == e) for e in range(EPOCHS)}
    assert steps[0] == steps[1] == steps[2] == NUM_SAMPLES // BATCH
    assert steps[2] > steps[3] > steps[4] > steps[5] >= 1
    values = [lr for _, lr in lrs]
    assert values[1] == pytest.approx(LR, abs=1e-6)  # warm-up over (2 steps)
    assert all(b <= a for a, b in zip(values[1:], values[2:]))  # never back up the cosine
    # The last step sits at nominal * (5 + (n - 1) / n) of nominal * 6: cosine ~ 0.
    nominal, last = NUM_SAMPLES // BATCH, steps[5]
    position = nominal * (EPOCHS - 1) + nominal * (last - 1) / last
    want = 0.5 * (1 + np.cos(np.pi * (position - 2) / (nominal * EPOCHS - 2))) * LR
    assert values[-1] == pytest.approx(want, abs=2e-6)
    assert values[-1] < 0.05 * LR


def test_resume_latest_continues_to_the_uninterrupted_result(full_run, resumed_run):
    assert "=> resuming checkpoint" in (resumed_run / "out.log").read_text()
    full_log, resumed_log = _store_log(full_run), _store_log(resumed_run)
    for a, b in zip(full_log, resumed_log, strict=True):
        for key in ("epoch", "phase", "num_kept", "num_candidates", "warmup_ended_at",
                    "rho_cur"):
            assert a[key] == b[key], (key, a, b)
        assert a["mean_loss"] == pytest.approx(b["mean_loss"], rel=1e-5)
    assert _lrs(full_run)[-1] == _lrs(resumed_run)[-1]
    a = torch.load(full_run / "checkpoints" / "epoch_6.pt", map_location="cpu")["state_dict"]
    b = torch.load(resumed_run / "checkpoints" / "epoch_6.pt", map_location="cpu")["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-6), key
    assert json.loads((full_run / "scan-coreset.json").read_text()) == json.loads(
        (resumed_run / "scan-coreset.json").read_text())


@pytest.fixture(scope="module")
def csv_file(shards, tmp_path_factory) -> Path:
    """open_clip's CSV layout (tab-separated, filepath / title) over the shards' images."""
    import tarfile

    folder = tmp_path_factory.mktemp("csv")
    rows = ["filepath\ttitle"]
    for tar_path in sorted(shards.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for name, payload in members.items():
            if name.endswith(".png"):
                image = folder / name.replace("/", "_")
                image.write_bytes(payload)
                caption = members[name[:-4] + ".txt"].decode().replace("\t", " ")
                rows.append(f"{image}\t{caption}")
    path = folder / "train.csv"
    path.write_text("\n".join(rows) + "\n")
    assert len(rows) == NUM_SAMPLES + 1
    return path


def test_the_csv_path_carries_ids_and_serves_each_plan(patched, shards, csv_file, tmp_path):
    cmd, env = _command(patched, shards, tmp_path)
    at = cmd.index("--train-data")
    cmd[at + 1:at + 2] = [str(csv_file)]
    cmd[cmd.index("--dataset-type") + 1] = "csv"
    cmd[cmd.index("--epochs") + 1] = "4"
    cmd[cmd.index("--scan-warmup-epochs") + 1] = "1"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-6000:]
    run = tmp_path / "run"
    log, logged = _store_log(run), _scan_lines(run)
    assert [row["phase"] for row in log] == ["warmup", "prepare", "mutate", "mutate"]
    for row in log:  # the pruner refuses a pruned id, so a finished run served only kept ones
        assert logged[row["epoch"]]["num_pruned"] == NUM_SAMPLES - row["num_kept"]
        assert row["num_recorded"] == row["num_kept"] // BATCH * BATCH  # drop_last, once each
    assert 0 < logged[2]["num_pruned"] < logged[3]["num_pruned"]


def test_gradient_accumulation_is_refused_before_training(patched, shards, tmp_path):
    cmd, env = _command(patched, shards, tmp_path, "--accum-freq", "2")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode != 0
    assert "--scan does not support --accum-freq 2" in done.stderr
    assert "Start epoch" not in (tmp_path / "run" / "out.log").read_text()


@pytest.fixture(scope="module")
def patched_for_cpu_ddp(patched, tmp_path_factory) -> Path:
    """The patched copy with one line of open_clip changed for this test only: open_clip 3.3.0
    passes device_ids=[device] to DistributedDataParallel, which torch refuses for a CPU model,
    so open_clip cannot run data-parallel on CPUs at all; on GPUs the line is unchanged."""
    site = tmp_path_factory.mktemp("patched-cpu-ddp")
    shutil.copytree(patched / "open_clip_train", site / "open_clip_train")
    main = site / "open_clip_train" / "main.py"
    text = main.read_text()
    assert text.count("device_ids=[device], **ddp_args)") == 2
    main.write_text(text.replace("device_ids=[device], **ddp_args)",
                                 'device_ids=None if device.type == "cpu" else [device], '
                                 "**ddp_args)"))
    return site


@pytest.mark.distributed
@pytest.mark.parametrize("data", ["csv", "webdataset"])
def test_two_gloo_ranks_prune_identically(patched_for_cpu_ddp, shards, csv_file, tmp_path, data):
    """Two ranks (gloo, env://), --local-loss --gather-with-grad: the pruner checks at every
    epoch end that both ranks hold the same plan and candidates (it raises otherwise), and
    open_clip's log holds its counts; on CSV each rank trains on its half of the kept ids."""
    cmd, env = _command(patched_for_cpu_ddp, shards, tmp_path, "--local-loss",
                        "--gather-with-grad", "--dist-backend", "gloo", "--dist-url", "env://")
    cmd[cmd.index("--epochs") + 1] = "4"
    cmd[cmd.index("--scan-warmup-epochs") + 1] = "1"
    cmd[cmd.index("--batch-size") + 1] = str(BATCH // 2)
    if data == "csv":
        cmd[cmd.index("--train-data") + 1] = str(csv_file)
        cmd[cmd.index("--dataset-type") + 1] = "csv"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(cmd, env=dict(env, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    errors = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors[0][-4000:] + errors[1][-4000:]
    run = tmp_path / "run"
    log, logged = _store_log(run), _scan_lines(run)
    assert [row["phase"] for row in log] == ["warmup", "prepare", "mutate", "mutate"]
    for row in log:
        assert logged[row["epoch"]]["num_pruned"] == NUM_SAMPLES - row["num_kept"]
        if data == "csv":  # DistributedSampler's padding, then drop_last per rank
            per_rank = -(-row["num_kept"] // 2) // (BATCH // 2) * (BATCH // 2)
            assert row["num_recorded"] == 2 * per_rank
    assert 0 < logged[2]["num_pruned"] < logged[3]["num_pruned"]
