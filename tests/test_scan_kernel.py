"""numerics/scan.py against a brute force that materialises every activation, and its merge."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neurolens.numerics.scan import EMPTY_KEY, ScanState, edges_from
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


def _scan(acts, ex, lengths, gate, up, lo, scale, chunks, gated=True, backend="auto"):
    st = ScanState.empty(lo, scale, k=K, window=W, samples=S, gated=gated, bins=B)
    t = acts.shape[1]
    for idx in chunks:
        valid = torch.from_numpy(np.arange(t)[None, :] < lengths[idx, None])
        st.update(torch.from_numpy(acts[idx]), torch.from_numpy(ex[idx]), valid,
                  torch.from_numpy(gate[idx]), torch.from_numpy(up[idx]), backend=backend)
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


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_scan_state_equals_brute_force(dtype, backend):
    acts, ex, lengths, gate, up = _data(0, dtype=dtype)
    lo, scale = edges_from(torch.from_numpy(acts[:8]), bins=B)
    ref = reference(acts, ex, lengths, lo.numpy(), scale.numpy(), k=K, window=W, samples=S, bins=B,
                    gate=gate, up=up)
    chunks = [np.arange(i, min(i + 6, len(ex))) for i in range(0, len(ex), 6)]
    st = _scan(acts, ex, lengths, gate, up, lo, scale, chunks, backend=backend)
    _check(st, ref, acts.shape[2])
    # values reach the overflow bin (the tie planted above the calibration range)
    assert st.hist_max[:, -1].sum() > 0


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_merge_is_exact_and_order_free(backend):
    acts, ex, lengths, gate, up = _data(1)
    lo, scale = edges_from(torch.from_numpy(acts[:8]), bins=B)
    ref = reference(acts, ex, lengths, lo.numpy(), scale.numpy(), k=K, window=W, samples=S, bins=B,
                    gate=gate, up=up)
    rng = np.random.default_rng(5)
    perm = rng.permutation(len(ex))
    parts = np.array_split(perm, 3)
    states = [_scan(acts, ex, lengths, gate, up, lo, scale, [p[i:i + 4] for i in range(0, len(p), 4)],
                    backend=backend) for p in parts]
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


def _same_state(a: ScanState, b: ScanState, amax: float = 1.0) -> None:
    """Bit for bit, but for the float64 moments (summed in another order and around another
    shift): those to float64's accuracy for activations of magnitude up to `amax`."""
    from dataclasses import fields

    for f in fields(ScanState):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "_pending":
            continue
        if f.name in ("mean", "m2"):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-15 * max(amax, 1.0))
        elif isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape, f.name
            if x.dtype == torch.float32:
                x, y = x.view(torch.int32), y.view(torch.int32)   # NaN and -0.0 bits too
            assert torch.equal(x, y), f.name
        else:
            assert x == y, f.name


AMAX = 1e6     # the awkward activations' largest magnitude


def _awkward(seed: int, e: int = 45, t: int = 9, n: int = 300):
    """Ties (values on a 0.5 grid, -0.0 beside 0.0), a mask with holes, an excerpt with no
    valid token, values beyond both outer bins, and two chunks of neurons, one partial."""
    rng = np.random.default_rng(seed)
    acts = (np.round(rng.standard_normal((e, t, n)) * 2) / 2).astype(np.float32)
    acts[acts == 0] = rng.choice(np.array([0.0, -0.0], np.float32), size=int((acts == 0).sum()))
    acts[3, 4, :] = AMAX
    acts[5, 0, :] = -AMAX
    valid = rng.random((e, t)) < 0.8
    valid[7] = False
    valid[[3, 5]] = True
    gate = rng.standard_normal((e, t, n)).astype(np.float32)
    up = rng.standard_normal((e, t, n)).astype(np.float32)
    return acts, valid, np.arange(1000, 1000 + e, dtype=np.int64)[rng.permutation(e)], gate, up


@pytest.mark.parametrize("gated", [False, True])
def test_backends_agree_bit_for_bit(gated):
    """The numba pass (CPU) and the torch ops (the CUDA path) build the same state, batch by
    batch, from uneven batches (one of a single excerpt), and a state fed by both in turn too."""
    acts, valid, ex, gate, up = _awkward(3)
    lo, scale = edges_from(torch.from_numpy(acts[10:20]), torch.from_numpy(valid[10:20]), bins=B)
    cuts = [0, 1, 8, 9, 20, 33, 45]
    states = {b: ScanState.empty(lo, scale, k=K, window=W, samples=S, gated=gated, bins=B)
              for b in ("numba", "torch", "mixed")}
    for i, (a, z) in enumerate(zip(cuts, cuts[1:])):
        args = [torch.from_numpy(x[a:z]) for x in (acts, ex, valid, gate, up)]
        for b, st in states.items():
            st.update(*args, backend=b if b != "mixed" else ("numba", "torch")[i % 2])
        states["torch"].flush()
        _same_state(states["numba"], states["torch"], AMAX)
    states["mixed"].flush()
    _same_state(states["numba"], states["mixed"], AMAX)
    assert states["numba"].hist[:, 0].sum() > 0 and states["numba"].hist[:, -1].sum() > 0
    tv = states["numba"].top_val
    assert (tv[1:] == tv[:-1]).any(0).float().mean() > 0.5        # ties: decided by excerpt id
    # no mask: every token counts, in both
    st = {b: ScanState.empty(lo, scale, k=K, window=W, samples=S, gated=gated, bins=B) for b in ("numba", "torch")}
    for b in st:
        st[b].update(torch.from_numpy(acts[:12]), torch.from_numpy(ex[:12]), backend=b)
        st[b].flush()
    _same_state(st["numba"], st["torch"], AMAX)
    assert st["numba"].n_tokens == 12 * acts.shape[1]


def test_numba_backend_refuses_other_devices_and_names():
    st = ScanState.empty(torch.zeros(3), torch.ones(3), k=2, window=2, samples=1, bins=4)
    with pytest.raises(ValueError, match="unknown scan backend"):
        st.update(torch.zeros(1, 2, 3), torch.zeros(1), backend="cuda")
