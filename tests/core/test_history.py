"""The loss history's features (scan_core/history.py): the chunked Numba kernels against their
numpy twin, invariance to the chunk size, what each feature says on a history built by hand,
the store's history chunked along samples, and typed errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scan_core import ScanConfig, ScanInputError, ScanPruner
from scan_core.history import FEATURES, features_numpy, history_features, store_features
from scan_core.store import HISTORY_CHUNK_SAMPLES
from tests.core.streams import LossStream, run


def random_history(seed: int, epochs: int, views: int, n: int, nan_share: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 1.0, (epochs, views, n)).astype(np.float32) * rng.uniform(0.5, 3, epochs
                                                                                  )[:, None, None]
    x[rng.random(x.shape) < nan_share] = np.nan
    return x


def assert_features_equal(got: dict, want: dict) -> None:
    for name in FEATURES:
        np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=2e-5, equal_nan=True,
                                   err_msg=name)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), epochs=st.integers(1, 5), views=st.integers(1, 3),
       n=st.integers(2, 300), chunk=st.integers(1, 400), window=st.integers(1, 6),
       nan_share=st.sampled_from([0.0, 0.1, 0.6]))
def test_chunked_kernels_match_the_numpy_twin(seed, epochs, views, n, chunk, window, nan_share):
    hist = random_history(seed, epochs, views, n, nan_share)
    got = history_features(list(hist), window=window, chunk_samples=chunk)
    assert_features_equal(got, features_numpy(hist, window))
    for name in FEATURES:
        assert got[name].shape == (n,) and got[name].dtype == np.float32


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), chunk=st.integers(1, 97))
def test_the_chunk_size_changes_nothing_but_rounding(seed, chunk):
    hist = random_history(seed, 3, 2, 200, 0.1)
    assert_features_equal(history_features(list(hist), chunk_samples=chunk),
                          history_features(list(hist), chunk_samples=200))


def test_each_feature_on_a_history_built_by_hand():
    # 4 samples, 3 epochs, 1 view. Sample 0 stays at the top (a wrong caption); sample 1 starts
    # at the top and falls (a hard pair being learned); 2 and 3 are ordinary.
    hist = np.array([[[9.0, 9.0, 1.0, 1.0]],
                     [[9.0, 5.0, 1.0, 1.0]],
                     [[9.0, 1.0, 1.0, 1.0]]], np.float32)
    f = history_features(list(hist), window=2)
    assert f["last"][0] > 0 and f["last"][1] < 0
    assert f["persist"][0] > f["persist"][1] and f["persist"][1] == pytest.approx(f["last"][1])
    assert f["delta"][1] < 0 < f["delta"][0]
    assert f["mean"][0] == max(f["mean"])
    assert np.argsort(-f["persist"])[0] == 0


def test_an_unseen_epoch_makes_persist_and_delta_unknown_but_not_mean():
    hist = random_history(3, 3, 2, 20, 0.0)
    hist[2, 1, 5] = np.nan  # sample 5 has a view unseen in the newest epoch
    f = history_features(list(hist), window=2)
    assert np.isnan(f["last"][5]) and np.isnan(f["persist"][5]) and np.isnan(f["delta"][5])
    assert np.isfinite(f["mean"][5])
    assert np.isfinite(f["persist"][np.arange(20) != 5]).all()


def test_one_epoch_has_no_delta_and_persist_is_last():
    hist = random_history(4, 1, 2, 30, 0.0)
    f = history_features(list(hist), window=3)
    assert np.isnan(f["delta"]).all()
    np.testing.assert_array_equal(f["persist"], f["last"])


def test_the_store_keeps_history_in_sample_chunks_and_reads_it_back(tmp_path, monkeypatch):
    import scan_core.store as store_module
    monkeypatch.setattr(store_module, "HISTORY_CHUNK_SAMPLES", 64)
    path = tmp_path / "run.zarr"
    n = 300
    pruner = ScanPruner(n, 2, ScanConfig(seed=2), store=path, loss_history="float16")
    run(pruner, 9, LossStream(seed=51), 50)
    store = pruner._store
    epochs = store.history_epochs()
    assert len(epochs) >= 2
    for e in epochs:
        assert store.history_array(e).chunks == (2, 64)
    whole = np.stack([store.read_history(e) for e in epochs]).astype(np.float32)
    # Written 64 samples at a time, the history equals one written in a single chunk.
    monkeypatch.setattr(store_module, "HISTORY_CHUNK_SAMPLES", 1 << 20)
    other = ScanPruner(n, 2, ScanConfig(seed=2), store=tmp_path / "one.zarr",
                       loss_history="float16")
    run(other, 9, LossStream(seed=51), 50)
    assert other._store.history_array(epochs[0]).chunks == (2, n)
    np.testing.assert_array_equal(
        np.stack([other._store.read_history(e) for e in epochs]).astype(np.float32), whole)
    other.close()
    assert_features_equal(store_features(store, chunk_samples=50), features_numpy(whole))
    assert_features_equal(store_features(store, epochs[:1], window=1),
                          features_numpy(whole[:1], 1))
    pruner.close()


def test_asking_for_some_features_returns_those_only_and_the_same_values():
    hist = random_history(8, 3, 2, 150, 0.1)
    full = history_features(list(hist), chunk_samples=40)
    some = history_features(list(hist), chunk_samples=40, names=("persist", "delta"))
    assert set(some) == {"persist", "delta"}
    for name in some:
        np.testing.assert_array_equal(some[name], full[name])


def test_the_default_history_chunk_is_a_million_samples():
    assert HISTORY_CHUNK_SAMPLES == 1 << 20


@pytest.mark.parametrize("kw, match", [
    ({"window": 0}, "window must be an int >= 1"),
    ({"window": 1.5}, "window must be an int >= 1"),
    ({"chunk_samples": 0}, "chunk_samples must be an int >= 1"),
    ({"names": ("persist", "slope")}, r"names must be a non-empty subset of \('last'"),
    ({"names": ()}, "names must be a non-empty subset"),
])
def test_bad_arguments_raise_typed_errors_naming_the_value(kw, match):
    with pytest.raises(ScanInputError, match=match):
        history_features(list(random_history(1, 2, 1, 10, 0.0)), **kw)


def test_no_epochs_or_mixed_shapes_are_refused():
    with pytest.raises(ScanInputError, match="holds no preparation epoch"):
        history_features([])
    with pytest.raises(ScanInputError, match=r"must be \(1, 10\)"):
        history_features([np.zeros((1, 10), np.float32), np.zeros((1, 11), np.float32)])


def test_asking_the_store_for_an_epoch_it_lacks_names_what_it_holds(tmp_path):
    pruner = ScanPruner(300, 2, ScanConfig(seed=2), store=tmp_path / "r.zarr",
                        loss_history="float16")
    run(pruner, 9, LossStream(seed=51), 50)
    with pytest.raises(ScanInputError, match=r"\[999\] are not in the store"):
        store_features(pruner._store, [999])
    pruner.close()
