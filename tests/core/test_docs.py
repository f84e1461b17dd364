"""The code in the docs runs as written."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_the_embedding_loop_runs_and_prunes(capsys):
    block = _python_blocks(ROOT / "docs" / "embedding.md")[0]
    namespace: dict = {}
    exec(compile(block, "docs/embedding.md", "exec"), namespace)
    pruner = namespace["pruner"]
    assert pruner.next_epoch == namespace["EPOCHS"]
    assert any(row["phase"] == "mutate" and row["num_kept"] < namespace["N"] for row in pruner.log)
    assert len(namespace["coreset_ids"]) == namespace["N"] - pruner.num_candidates
    assert "saved so far" in capsys.readouterr().out


def test_the_store_reading_snippet_runs(tmp_path, monkeypatch):
    from scan_core import ScanConfig, ScanPruner
    import numpy as np

    monkeypatch.chdir(tmp_path)
    pruner = ScanPruner(300, 2, ScanConfig(warmup_epochs=0), store="run/scan.zarr",
                        loss_history="float16")
    rng = np.random.default_rng(1)
    for epoch in range(2):
        plan = pruner.plan_epoch(epoch)
        ids = plan.kept_ids
        pruner.record(ids, rng.random((2, len(ids))))
        pruner.end_epoch()
    namespace: dict = {}
    exec(compile(_python_blocks(ROOT / "docs" / "store.md")[0], "docs/store.md", "exec"), namespace)
    assert [row["epoch"] for row in namespace["log"]] == [0, 1]
    assert namespace["losses"].shape == (2, 300)
    assert namespace["persist"].shape == (300,) and np.isfinite(namespace["persist"]).all()


def test_the_adapter_writing_snippet_runs_on_two_ranks(capsys):
    """docs/adapters.md: the DLPack adapter is a FrameworkAdapter without a copy, and its two
    simulated ranks prune alike and record every kept id of every epoch."""
    import numpy as np

    from adapters.protocol import FrameworkAdapter

    blocks = _python_blocks(ROOT / "docs" / "adapters.md")
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], "docs/adapters.md", "exec"), namespace)
    rank0, rank1 = namespace["ranks"]
    assert rank0.log == rank1.log and len(rank0.log) == namespace["EPOCHS"]
    assert any(row["phase"] == "mutate" and row["num_kept"] < namespace["N"] for row in rank0.log)
    assert all(row["num_unrecorded"] == 0 and row["num_repeated"] == 0 for row in rank0.log)
    adapter = namespace["DLPackAdapter"]()
    assert isinstance(adapter, FrameworkAdapter)
    host = np.arange(6.0)
    assert np.shares_memory(adapter.to_numpy(host), host)
    assert "mutate" in capsys.readouterr().out
