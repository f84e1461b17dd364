"""Two ranks started by hand (no torchrun: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and
LOCAL_RANK set as srun or a hand-written launcher sets them), one of which raises one of our
typed errors mid-run while the other goes on into a collective. Nothing kills the survivor for
us here, as torchrun would: the failing rank must print `error: <Type>: <message>` and exit 2,
and its peer must leave its collective with a non-zero exit and no closing line, each well
within the subprocess timeout below (a timeout is a hang, and fails the test).

What happens on gloo (CPU): run_command returns 2 and the failing process exits, its sockets
close, and the peer's pending gloo operation fails at once with gloo's RuntimeError
("Connection closed by peer ... typically caused by a remote worker crashing"), a traceback
and exit code 1. These tests pin that, for a failing non-host rank (1) and for the rank that
hosts the TCPStore (0). The triggers are real ones, not injected: a pipe: shard truncated
after it was indexed (only the rank whose split holds it reads it), and an --imagenet-val
folder whose images do not decode (only rank 0 evaluates; rank 1 waits in the checkpoint's
all_gather meanwhile)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

pytest.importorskip("PIL", reason="the corpus readers decode with Pillow (pip install pillow)")
torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from tests.trainers.ddp import free_port  # noqa: E402
from tests.trainers.test_corpora import IMAGES_FILE, plan_dropping  # noqa: E402

pytestmark = [pytest.mark.distributed,
              pytest.mark.skipif(not IMAGES_FILE.is_file(),
                                 reason="Fashion-MNIST is not installed")]

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT = 120  # seconds per rank; each run below ends in about 10-20 s on 2 busy cores
COMMON = ["--preset", "cpu-tiny", "--batch-size", "32", "--epochs", "1", "--seed", "0",
          "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """2 tar shards of 64 Fashion-MNIST samples each (make_shards), intact."""
    from reference_trainers.common.corpora import make_shards

    folder = tmp_path_factory.mktemp("ddp-failure") / "data"
    assert make_shards.main(["--from-fashion-mnist", "--num-samples", "128",
                             "--samples-per-shard", "64", "--out", str(folder)]) == 0
    return folder


def run_two_ranks(args: list[str]) -> list[tuple[int, float, str, str]]:
    """Start ranks 0 and 1 of `python -m reference_trainers.clip ARGS` as plain processes;
    (exit code, seconds, stdout, stderr) of each. A rank still running after TIMEOUT is killed
    (with its peer) and fails the test."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for key in [k for k in env if k.startswith("TORCHELASTIC_")]:
        del env[key]  # not under an elastic agent
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "reference_trainers.clip", *args],
                              cwd=ROOT, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    results = []
    try:
        for r, proc in enumerate(procs):
            left = max(1.0, TIMEOUT - (time.monotonic() - start))
            try:
                out, err = proc.communicate(timeout=left)
            except subprocess.TimeoutExpired:
                for p in procs:
                    p.kill()
                tails = [p.communicate()[1][-1500:] for p in procs]
                pytest.fail(f"rank {r} still running after {TIMEOUT} s (a hang); stderr tails: "
                            f"{tails}")
            results.append((proc.returncode, time.monotonic() - start, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


def check_ending(results, failing: int, error: str) -> None:
    """The failing rank: exit 2 and its typed error's line; the other: a non-zero exit, no
    closing line; both long before the timeout."""
    peer = 1 - failing
    code, _, out, err = results[failing]
    assert code == 2, err[-3000:]
    assert any(line.startswith(f"error: {error}") for line in err.splitlines()), err[-3000:]
    code, _, out, err = results[peer]
    assert code not in (0, 2), (code, err[-3000:])  # not a success, not our own error
    assert "of sample-visits" not in out, out  # the closing line (progress.closing_line)
    assert "Connection closed by peer" in err, err[-3000:]  # gloo names a crashed peer
    assert max(seconds for _, seconds, _, _ in results) < TIMEOUT * 0.75


def test_a_rank_reading_a_truncated_pipe_shard_ends_both_ranks_without_torchrun(shards, tmp_path):
    """Rank 1's split of epoch 0 is one pipe: shard, truncated after the index was built (a
    pipe: shard's size is not checked when the index is opened: it is streamed): rank 1 raises
    DataError while rank 0 waits in DDP's broadcast of its first forward pass."""
    from reference_trainers.common.corpora.shards import ShardIndex, ShardStream
    from reference_trainers.common.corpora.images import ImageSpec

    folder = tmp_path / "data"
    shutil.copytree(shards, folder)
    source = f"pipe:cat {folder}/shard-{{000000..000001}}.tar"
    index = ShardIndex.open(source, index_path=tmp_path / "index.npz")
    stream = ShardStream(index, tokenizer=None, captions=False, spec=ImageSpec.cpu(), rank=1,
                         world_size=2, seed=0)
    order = stream.served_order(plan_dropping(len(index), set(), epoch=0))
    shard = folder / f"shard-{int(index.shard[order[len(order) // 2]]):06d}.tar"  # rank 1's
    os.truncate(shard, shard.stat().st_size // 2)
    results = run_two_ranks(COMMON + ["--train-data", source,
                                      "--shard-index", str(tmp_path / "index.npz"),
                                      "--num-test", "50", "--out", str(tmp_path / "run")])
    check_ending(results, failing=1, error="DataError: cannot read shard")
    assert shard.name in results[1][3]


def test_rank_0_failing_its_evaluation_ends_both_ranks_without_torchrun(shards, tmp_path):
    """Only rank 0 evaluates: an --imagenet-val folder whose images do not decode is its
    DataError at the end of epoch 0, while rank 1 waits in save_checkpoint's all_gather; rank 0
    also hosts the TCPStore."""
    val = tmp_path / "val"
    for name in ("shirt", "shoe"):
        (val / name).mkdir(parents=True)
        (val / name / "x.png").write_bytes(b"not a png")
    results = run_two_ranks(COMMON + ["--train-data", str(shards), "--imagenet-val", str(val),
                                      "--out", str(tmp_path / "run")])
    check_ending(results, failing=0, error=f"DataError: no image of {val} decodes")
