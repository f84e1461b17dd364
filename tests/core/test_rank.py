"""scan_core.rank: exact k-smallest / both-ends selection by bucket refinement.

Invariant: mark_smallest(values, k) marks exactly the first k entries of a stable argsort of
values (+0.0, so -0.0 ties with +0.0); mark_ends marks the first k_low and the last k_high.
Bucketing only decides speed, so the adversarial inputs are the ones that defeat buckets:
outliers, heavy ties, spans near the float limits, subnormals.
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from scan_core.rank import mark_ends, mark_smallest

SPECIAL = [0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 5e-324, 1e-30, 3.4e38, -3.4e38, 1.0000001,
           2.5, 1e30]


def _reference(values, k_low, k_high):
    order = np.argsort(values + values.dtype.type(0.0), kind="stable")
    m = len(values)
    return set(order[:k_low].tolist()), set(order[m - k_high:].tolist()) if k_high else set()


@st.composite
def _values(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    m = draw(st.integers(1, 400))
    kind = draw(st.sampled_from(["uniform", "skewed", "ties", "special", "outlier"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        values = rng.random(m)
    elif kind == "skewed":
        values = rng.lognormal(0.0, 3.0, m)
    elif kind == "ties":
        values = rng.choice([0.5, 1.0, 1.5], m)
    elif kind == "special":
        limit = np.finfo(dtype).max / 2
        values = np.clip(rng.choice(SPECIAL, m), -limit, limit)
    else:
        values = rng.random(m)
        values[rng.integers(0, m)] = 1e6
    values = values.astype(dtype)
    k_low = draw(st.integers(0, m))
    k_high = draw(st.integers(0, m - k_low))
    return values, k_low, k_high


@given(_values())
def test_mark_smallest_equals_a_stable_argsort(case):
    """The k smallest by (value, position), for every k and adversarial value sets."""
    values, k, _ = case
    mark = np.zeros(len(values), np.uint8)
    mark_smallest(values, k, mark)
    assert set(np.flatnonzero(mark).tolist()) == _reference(values, k, 0)[0]


@given(_values())
def test_mark_ends_equals_a_stable_argsort(case):
    """Both ends at once: the first k_low and the last k_high of a stable argsort, disjoint."""
    values, k_low, k_high = case
    low = np.zeros(len(values), np.uint8)
    high = np.zeros(len(values), np.uint8)
    mark_ends(values, k_low, k_high, low, high)
    want_low, want_high = _reference(values, k_low, k_high)
    assert set(np.flatnonzero(low).tolist()) == want_low
    assert set(np.flatnonzero(high).tolist()) == want_high
    assert not (low & high).any()


@given(hnp.arrays(np.float64, st.integers(1, 64),
                  elements=st.floats(allow_nan=False, allow_infinity=False, width=64)),
       st.data())
def test_any_finite_float64_values(values, data):
    """Any finite float64 values at all (hypothesis' own extremes), any k."""
    k_low = data.draw(st.integers(0, len(values)))
    k_high = data.draw(st.integers(0, len(values) - k_low))
    low = np.zeros(len(values), np.uint8)
    high = np.zeros(len(values), np.uint8)
    mark_ends(values, k_low, k_high, low, high)
    want_low, want_high = _reference(values, k_low, k_high)
    assert set(np.flatnonzero(low).tolist()) == want_low
    assert set(np.flatnonzero(high).tolist()) == want_high


def test_marks_are_only_ever_set():
    """Callers pre-clear the mark; a set entry is never cleared (marks accumulate)."""
    values = np.arange(10, dtype=np.float32)[::-1].copy()
    mark = np.ones(10, np.uint8)
    mark_smallest(values, 3, mark)
    assert mark.all()
