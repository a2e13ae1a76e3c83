"""A brute-force numpy reference for numerics/scan.py: materialise every activation, then
sort, count and hash the whole array at once."""
from __future__ import annotations

import numpy as np

MASK31 = (1 << 31) - 1


def np_hash(ex: np.ndarray, n: np.ndarray) -> np.ndarray:
    h = (ex.astype(np.int64) + n.astype(np.int64) * 0x9E3779B1) & MASK31
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & MASK31
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & MASK31
    return h ^ (h >> 16)


def reference(acts: np.ndarray, ex_ids: np.ndarray, lengths: np.ndarray, lo: np.ndarray,
              scale: np.ndarray, *, k: int, window: int, samples: int, bins: int,
              gate: np.ndarray | None = None, up: np.ndarray | None = None) -> dict:
    """acts [E, T, N] float32 (every excerpt of the corpus), lengths [E]."""
    e_n, t_n, n = acts.shape
    valid = np.arange(t_n)[None, :] < lengths[:, None]
    xv = acts[valid].astype(np.float64)
    out: dict = {"n_tokens": xv.shape[0], "mean": xv.mean(0), "std": xv.std(0),
                 "active": (acts[valid] > 0).sum(0)}

    def bin_of(x):
        b = np.floor((x.astype(np.float32) - lo) * scale).astype(np.float32)
        return (np.clip(b, -1, bins) + 1).astype(np.int64)

    nb = bins + 2
    hb = bin_of(acts[valid])
    out["hist"] = np.stack([np.bincount(hb[:, j], minlength=nb) for j in range(n)])
    xm = np.where(valid[..., None], acts, -np.inf)
    emax, epos = xm.max(1), xm.argmax(1)
    out["hist_max"] = np.stack([np.bincount(bin_of(emax)[:, j], minlength=nb) for j in range(n)])

    def top(val, pos):
        order = np.lexsort((np.broadcast_to(ex_ids[:, None], val.shape), -val), axis=0)[:k]
        cols = np.arange(n)[None, :]
        v, p = val[order, cols], pos[order, cols]
        e = ex_ids[order]
        start = np.minimum(np.maximum(p - window // 2, 0), np.maximum(lengths[order] - window, 0))
        win = np.full((len(order), window, n), np.nan, dtype=np.float32)
        for i in range(window):
            idx = start + i
            ok = idx < lengths[order]
            win[:, i, :] = np.where(ok, acts[order, np.minimum(idx, t_n - 1), cols], np.nan)
        return v, e, p, win, start

    out["top"] = top(emax, epos)
    if gate is not None:
        xn = np.where(valid[..., None], acts, np.inf)
        out["bot"] = top(-xn.min(1), xn.argmin(1))
        g, u = gate[valid] > 0, up[valid] > 0
        out["signs"] = np.stack([((g == a) & (u == b)).sum(0) for a, b in
                                 ((False, False), (False, True), (True, False), (True, True))], 1)
    # samples: per (neuron, bin of the excerpt max), the S smallest hash keys
    key = np_hash(np.broadcast_to(ex_ids[:, None], (e_n, n)), np.arange(n)[None, :])
    seg = bin_of(emax) + np.arange(n)[None, :] * nb
    samp = {}
    for s_ in np.unique(seg):
        m = seg == s_
        ks, es = key[m], np.broadcast_to(ex_ids[:, None], (e_n, n))[m]
        o = np.argsort(ks)[:samples]
        samp[int(s_)] = sorted(zip(ks[o].tolist(), es[o].tolist(), emax[m][o].tolist()))
    out["samples"] = samp
    return out
