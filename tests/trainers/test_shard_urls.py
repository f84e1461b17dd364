"""webdataset URLs as shard sources (corpora/shard_sources.py): brace patterns, single .tar
files, '::' lists and pipe: commands give the ids a folder gives; a pipe: shard is streamed and
its pruned samples are dropped before decode; the index lives where the run says (a read-only
dataset folder is never written) and a changed shard is refused by name."""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("PIL", reason="the corpus readers decode with Pillow (pip install pillow)")
pytest.importorskip("braceexpand", reason="brace patterns need braceexpand")

from reference_trainers.common.corpora import shard_sources, shards  # noqa: E402
from reference_trainers.common.corpora.run_index import index_for_run  # noqa: E402
from reference_trainers.common.corpora.shard_sources import ShardList, expand_urls  # noqa: E402
from reference_trainers.common.corpora.shards import INDEX_NAME, ShardIndex  # noqa: E402
from reference_trainers.common.errors import DataError  # noqa: E402
from tests.trainers.test_corpora import (IMAGES_FILE, fmnist, plan_dropping,  # noqa: E402,F401
                                         png, stream_for, write_tar)

pytestmark = pytest.mark.skipif(not IMAGES_FILE.is_file(), reason="Fashion-MNIST is not installed")


@pytest.fixture
def two_shards(tmp_path, fmnist):  # noqa: F811
    """img2dataset-style: DIR/00000.tar, DIR/00001.tar, 9-digit keys, .jpg/.txt/.json members
    and a _stats.json beside; 6 samples each; sample 000000003 has an empty caption."""
    images, captions = fmnist
    folder = tmp_path / "data"
    folder.mkdir()
    for s in range(2):
        members = []
        for j in range(6):
            i = 6 * s + j
            key = f"{i:09d}"
            members += [(f"{key}.jpg", png(images[i])),
                        (f"{key}.txt", b"" if i == 3 else captions[i].encode()),
                        (f"{key}.json", b'{"url": "x"}')]
        write_tar(folder / f"{s:05d}.tar", members)
    (folder / "_stats.json").write_text("{}")
    return folder


# -------------------------------------------------------------------------- expansion
@settings(max_examples=60, deadline=None)
@given(lo=st.integers(0, 500), span=st.integers(0, 30), width=st.integers(1, 6),
       parts=st.integers(1, 3))
def test_brace_ranges_keep_padding_and_lists_keep_order(lo, span, width, parts):
    hi = lo + span
    pattern = f"d/{{{lo:0{width}d}..{hi:0{width}d}}}.tar"
    urls = expand_urls("::".join([pattern] * parts))
    one = [f"d/{i:0{width}d}.tar" for i in range(lo, hi + 1)]
    assert urls == one * parts


def test_sources_name_what_is_wrong(tmp_path):
    with pytest.raises(DataError, match=r"empty part"):
        expand_urls("a.tar::")
    (tmp_path / "00001.tar").write_bytes(b"")
    with pytest.raises(DataError, match=r"shard \S*/00002\.tar \(from .*does not exist"):
        ShardList.resolve(f"{tmp_path}/{{00001..00002}}.tar")
    (tmp_path / "a.tar").write_bytes(b"")
    with pytest.raises(DataError, match=r"more than once"):
        ShardList.resolve(f"{tmp_path}/a.tar::{tmp_path}/a.tar")
    with pytest.raises(DataError, match="index_path"):
        ShardIndex.open(f"{tmp_path}/a.tar")


# ------------------------------------------------------------------ the same ids, any URL
def _sources(folder: pathlib.Path) -> dict[str, str]:
    return {"folder": str(folder),
            "braces": f"{folder}/{{00000..00001}}.tar",
            "list": f"{folder}/00000.tar::{folder}/00001.tar",
            "pipe": f"pipe:cat {folder}/{{00000..00001}}.tar"}


def test_every_url_form_gives_the_folders_ids_and_samples(two_shards, tmp_path):
    plan = plan_dropping(12, {1, 7, 8})
    served = {}
    for name, source in _sources(two_shards).items():
        index = ShardIndex.open(source, index_path=tmp_path / f"{name}.npz")
        assert index.keys.tolist() == [f"{i:09d}" for i in range(12)], name
        assert index.skipped == {3: "empty .txt"}, name
        stream = stream_for(index, shuffle_buffer=0, shuffle=False)
        served[name] = [(i, image.tobytes(), tokens.tolist())
                        for image, tokens, i in stream.iter_worker(plan)]
    assert [i for i, _, _ in served["folder"]] == [0, 2, 4, 5, 6, 9, 10, 11]
    for name in ("braces", "list", "pipe"):
        assert served[name] == served["folder"], name
    single = ShardIndex.open(f"{two_shards}/00001.tar", index_path=tmp_path / "one.npz")
    assert single.keys.tolist() == [f"{i:09d}" for i in range(6, 12)]


def test_a_pipe_shard_drops_pruned_samples_before_decode(two_shards, tmp_path, monkeypatch):
    index = ShardIndex.open(_sources(two_shards)["pipe"], index_path=tmp_path / "i.npz")
    decoded = []
    real = shards.decode_image
    monkeypatch.setattr(shards, "decode_image",
                        lambda data, spec: decoded.append(data) or real(data, spec))
    dropped = {0, 1, 2, 4, 9, 10, 11}
    plan = plan_dropping(12, dropped)
    two = [stream_for(index, 0, 1, 2, shuffle_buffer=0, shuffle=False) for _ in range(2)]
    got = [i for w in range(2) for _, _, i in two[w].iter_worker(plan, w)]
    assert sorted(set(got)) == [5, 6, 7, 8] and not dropped & set(got)
    assert len(decoded) == len(got)  # one decode per served sample: pruned ones never


def test_a_pipe_shard_that_changed_or_fails_is_named(two_shards, tmp_path, fmnist):  # noqa: F811
    source = _sources(two_shards)["pipe"]
    index = ShardIndex.open(source, index_path=tmp_path / "i.npz")
    images, captions = fmnist
    write_tar(two_shards / "00001.tar", [("000000099.jpg", png(images[0])),
                                        ("000000099.txt", b"a shirt")])
    stream = stream_for(index, shuffle_buffer=0, shuffle=False)
    with pytest.raises(DataError, match=r"00001\.tar changed since it was indexed.*000000099"):
        list(stream.iter_worker(plan_dropping(12, set())))
    with pytest.raises(DataError, match=r"status 3.*gone"):
        ShardIndex.build("pipe:echo gone >&2; exit 3", index_path=tmp_path / "x.npz")


# ------------------------------------------------------------- the index of a run
def test_a_read_only_dataset_folder_is_never_written(two_shards, tmp_path):
    before = sorted(p.name for p in two_shards.iterdir())
    os.chmod(two_shards, 0o555)
    try:
        if os.geteuid() != 0:  # root writes anyway: the listing below is the check then
            with pytest.raises(DataError, match="shard index.*--shard-index"):
                ShardIndex.open(two_shards)
        run = tmp_path / "run"
        for source in (str(two_shards), f"{two_shards}/{{00000..00001}}.tar"):
            shutil.rmtree(run, ignore_errors=True)
            index = index_for_run(source, run_path=run)
            assert index.path == run / INDEX_NAME and index.path.is_file() and len(index) == 12
        own = index_for_run(str(two_shards), run_path=run, shard_index=tmp_path / "own.npz")
        assert own.path == tmp_path / "own.npz" and own.path.is_file()
        assert sorted(p.name for p in two_shards.iterdir()) == before
    finally:
        os.chmod(two_shards, 0o755)


def test_a_changed_shard_is_refused_on_resume_by_name(two_shards, tmp_path, fmnist):  # noqa: F811
    run = tmp_path / "run"
    source = f"{two_shards}/{{00000..00001}}.tar"
    first = index_for_run(source, run_path=run)
    again = index_for_run(source, run_path=run)  # unchanged shards: the stored index
    assert again.keys.tolist() == first.keys.tolist()
    images, _ = fmnist
    write_tar(two_shards / "00001.tar", [("000000006.jpg", png(images[1])),
                                        ("000000006.txt", b"a bag")])
    with pytest.raises(DataError, match=r"shard .*00001\.tar changed: indexed at \d+ bytes"):
        index_for_run(source, run_path=run)
    with pytest.raises(DataError, match=r"00001\.tar is gone"):
        index_for_run(f"{two_shards}/00000.tar", run_path=run)


def test_an_index_beside_the_shards_is_reused_and_copied(two_shards, tmp_path):
    beside = ShardIndex.open(two_shards)  # what make_shards leaves
    index = index_for_run(str(two_shards), run_path=tmp_path / "run")
    assert index.path == tmp_path / "run" / INDEX_NAME
    with np.load(index.path) as copied, np.load(beside.path) as original:
        assert copied["keys"].tolist() == original["keys"].tolist()


def test_train_num_samples_is_checked_against_the_index(two_shards, tmp_path):
    run = tmp_path / "run"
    assert len(index_for_run(str(two_shards), run_path=run, train_num_samples=12)) == 12
    assert len(index_for_run(str(two_shards), run_path=run, train_num_samples=11)) == 12
    with pytest.raises(DataError, match=r"--train-num-samples 100.*holds 12 samples, 11 of "
                                        r"them good.*pass 11"):
        index_for_run(str(two_shards), run_path=run, train_num_samples=100)
    image_only = index_for_run(str(two_shards), run_path=run, train_num_samples=12,
                               captions=False)
    assert len(image_only) == 12
    with pytest.raises(DataError, match="12 of them good"):
        index_for_run(str(two_shards), run_path=run, train_num_samples=11, captions=False)



# ------------------------------------------------------------------- a CLIP run on URLs
def _read_only(folder: pathlib.Path, writable: bool) -> None:
    for path in [*folder.iterdir(), folder]:
        os.chmod(path, (0o755 if path.is_dir() else 0o644) if writable else
                 (0o555 if path.is_dir() else 0o444))


def test_a_clip_run_on_a_read_only_brace_pattern_resumes_and_refuses_a_changed_shard(
        tmp_path, capsys):
    torch = pytest.importorskip("torch")  # noqa: F841
    from reference_trainers.clip import train as clip_train
    from reference_trainers.common.corpora import make_shards

    data = tmp_path / "data"
    assert make_shards.main(["--from-fashion-mnist", "--num-samples", "192",
                             "--samples-per-shard", "96", "--out", str(data)]) == 0
    (data / INDEX_NAME).unlink()  # as img2dataset leaves a dataset: no index
    listing = sorted(p.name for p in data.iterdir())
    argv = ["--preset", "cpu-tiny", "--train-data", f"{data}/shard-{{000000..000001}}.tar",
            "--train-num-samples", "192", "--batch-size", "64", "--epochs", "3",
            "--num-test", "100", "--threads", "1", "--quiet",
            "--logs", str(tmp_path / "logs"), "--name", "r"]
    run = tmp_path / "logs" / "r"
    _read_only(data, writable=False)
    try:
        assert clip_train.main(argv + ["--stop-after", "1"]) == 0
        assert clip_train.main(argv + ["--resume", "--stop-after", "1"]) == 0
        assert sorted(p.name for p in data.iterdir()) == listing  # nothing written there
    finally:
        _read_only(data, writable=True)
    assert (run / INDEX_NAME).is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(r["samples"] == r["num_kept"] == 192 for r in rows)  # warm-up epochs: all
    assert clip_train.main(argv[:-4] + ["--train-num-samples", "190", "--logs",
                                        str(tmp_path / "logs"), "--name", "other"]) == 2
    assert "--train-num-samples 190" in capsys.readouterr().err
    os.truncate(data / "shard-000001.tar", (data / "shard-000001.tar").stat().st_size - 1024)
    assert clip_train.main(argv + ["--resume"]) == 2
    assert "shard-000001.tar changed" in capsys.readouterr().err


def test_the_corpora_package_and_shard_sources_import_no_torch():
    """The command-line parsers read shard_sources (--train-data's URL forms); a JAX run must
    not pull torch in through them."""
    import subprocess
    import sys

    code = ("import sys; import reference_trainers.common.corpora as c; "
            "from reference_trainers.common.corpora import shard_sources; "
            "from reference_trainers.common import openclip_flags; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(sorted(c.__all__)[0])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[2])})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "BadSampleError"


def test_the_corpus_arrays_snippet_in_corpora_md_runs():
    import re

    text = (pathlib.Path(__file__).parents[2] / "docs" / "corpora.md").read_text()
    section = text[text.index("## 11. The JAX trainer's numpy batches"):]
    block = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    exec(compile(block, "docs/corpora.md", "exec"), {})
