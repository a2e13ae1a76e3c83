"""kernels/scan.py against a brute force that materialises every activation, and its merge."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neurolens.kernels.scan import EMPTY_KEY, ScanState, edges_from
from tests.scan_reference import reference

K, W, S, B = 5, 6, 3, 8


def _data(seed: int, e: int = 40, t: int = 12, n: int = 7, dtype=np.float16):
    rng = np.random.default_rng(seed)
    acts = rng.standard_normal((e, t, n)).astype(dtype).astype(np.float32)   # fp16: many ties
    acts[20, 2, :] = acts.max() + 10.0               # same max in two excerpts: a tie, and
    acts[30, 1, :] = acts[20, 2, :]                  # above the calibration chunk's range
    lengths = rng.integers(3, t + 1, size=e)
    lengths[[20, 30]] = t
    gate = rng.standard_normal((e, t, n)).astype(np.float32)
    up = rng.standard_normal((e, t, n)).astype(np.float32)
    return acts, np.arange(100, 100 + e, dtype=np.int64), lengths, gate, up


def _scan(acts, ex, lengths, gate, up, lo, scale, chunks, gated=True):
    st = ScanState.empty(lo, scale, k=K, window=W, samples=S, gated=gated, bins=B)
    t = acts.shape[1]
    for idx in chunks:
        valid = torch.from_numpy(np.arange(t)[None, :] < lengths[idx, None])
        st.update(torch.from_numpy(acts[idx]), torch.from_numpy(ex[idx]), valid,
                  torch.from_numpy(gate[idx]), torch.from_numpy(up[idx]))
    st.flush()
    return st


def _check(st: ScanState, ref: dict, n: int):
    assert st.n_tokens == ref["n_tokens"]
    np.testing.assert_allclose(st.mean.numpy(), ref["mean"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(st.std.numpy(), ref["std"], rtol=1e-10)
    np.testing.assert_array_equal(st.active.numpy(), ref["active"])
    np.testing.assert_array_equal(st.hist.numpy(), ref["hist"])
    np.testing.assert_array_equal(st.hist_max.numpy(), ref["hist_max"])
    for name in ("top", "bot"):
        v, e, p, win, start = ref[name]
        got = [getattr(st, f"{name}_{f}").numpy() for f in ("val", "ex", "pos", "win", "start")]
        np.testing.assert_array_equal(got[0], v)
        np.testing.assert_array_equal(got[1], e)
        np.testing.assert_array_equal(got[2], p)
        np.testing.assert_array_equal(got[3], win)
        np.testing.assert_array_equal(got[4], start)
    np.testing.assert_array_equal(st.signs.numpy(), ref["signs"])
    keys, exs, vals = st.s_key.numpy(), st.s_ex.numpy(), st.s_val.numpy()
    filled = {int(s): sorted(zip(keys[s][keys[s] < EMPTY_KEY].tolist(), exs[s][keys[s] < EMPTY_KEY].tolist(),
                                 vals[s][keys[s] < EMPTY_KEY].tolist()))
              for s in np.flatnonzero((keys < EMPTY_KEY).any(1))}
    assert filled == ref["samples"]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_scan_state_equals_brute_force(dtype):
    acts, ex, lengths, gate, up = _data(0, dtype=dtype)
    lo, scale = edges_from(torch.from_numpy(acts[:8]), bins=B)
    ref = reference(acts, ex, lengths, lo.numpy(), scale.numpy(), k=K, window=W, samples=S, bins=B,
                    gate=gate, up=up)
    chunks = [np.arange(i, min(i + 6, len(ex))) for i in range(0, len(ex), 6)]
    st = _scan(acts, ex, lengths, gate, up, lo, scale, chunks)
    _check(st, ref, acts.shape[2])
    # values reach the overflow bin (the tie planted above the calibration range)
    assert st.hist_max[:, -1].sum() > 0


def test_merge_is_exact_and_order_free():
    acts, ex, lengths, gate, up = _data(1)
    lo, scale = edges_from(torch.from_numpy(acts[:8]), bins=B)
    ref = reference(acts, ex, lengths, lo.numpy(), scale.numpy(), k=K, window=W, samples=S, bins=B,
                    gate=gate, up=up)
    rng = np.random.default_rng(5)
    perm = rng.permutation(len(ex))
    parts = np.array_split(perm, 3)
    states = [_scan(acts, ex, lengths, gate, up, lo, scale, [p[i:i + 4] for i in range(0, len(p), 4)])
              for p in parts]
    ab_c = states[0].merge(states[1]).merge(states[2])
    a_bc = states[0].merge(states[1].merge(states[2]))
    c_ba = states[2].merge(states[1].merge(states[0]))
    for st in (ab_c, a_bc, c_ba):
        _check(st, ref, acts.shape[2])
    # a state survives a save/load between shards unchanged
    back = ScanState.from_state_dict(ab_c.state_dict())
    _check(back, ref, acts.shape[2])


def test_merge_refuses_different_bins():
    acts, ex, lengths, gate, up = _data(2)
    lo, scale = edges_from(torch.from_numpy(acts[:8]), bins=B)
    a = ScanState.empty(lo, scale, k=K, window=W, samples=S, bins=B)
    b = ScanState.empty(lo + 1, scale, k=K, window=W, samples=S, bins=B)
    with pytest.raises(ValueError):
        a.merge(b)
