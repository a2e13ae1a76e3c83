"""CPU backend: numba kernels, parallel over tiles of neurons.

Per neuron the concept (+) and non-concept (-) activations are sorted
separately; everything else is a linear walk over the two sorted arrays:

* Mann–Whitney U by a two-pointer merge (#neg < v plus half #neg == v for
  every positive v), which is exactly the rank-sum with average ranks;
* the 95th percentile of the negatives, numpy's 'linear' method, bit for bit;
* consistency and range overlap by counting in the sorted arrays;
* means and variances two-pass in float64.

float16 input (the store's format) is read as raw uint16 bits, mapped to an
order-preserving 16-bit key and radix-sorted (two byte passes), then decoded
through a 65536-entry float64 table. Other float inputs are converted to
float64 and sorted with numba's quicksort.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# Output rows of the (N_FIELDS, n_neurons) float64 result matrix.
AUC, MEAN_POS, MEAN_NEG, STD_POS, STD_NEG, COHENS_D, T, DF = range(8)
CONSISTENCY, NEG_P95, RANGE_LO, RANGE_HI, RANGE_OVERLAP, VALID = range(8, 14)
N_FIELDS = 14
FIELD_NAMES = (
    "auc", "mean_pos", "mean_neg", "std_pos", "std_neg", "cohens_d", "t", "df",
    "consistency", "neg_p95", "range_lo", "range_hi", "range_overlap", "valid",
)

QUANTILE = 0.95
TILE = 32  # neurons per work item: one 64-byte cache line of fp16 per row


def _build_f16_lut() -> np.ndarray:
    """float64 value of every order-preserving fp16 key (see ``_f16_key``)."""
    key = np.arange(65536, dtype=np.int64)
    bits = np.where(key & 0x8000, key ^ 0x8000, 0xFFFF - key).astype(np.uint16)
    return bits.view(np.float16).astype(np.float64)


F16_LUT = _build_f16_lut()


@njit(cache=True, inline="always")
def _f16_key(u):
    """Order-preserving key of raw fp16 bits (branchless).

    -0 and +0 get neighbouring keys; both decode to values that compare
    equal, and all statistics compare decoded values, so they tie.
    """
    u = np.uint32(u)
    return u ^ (((u >> 15) * np.uint32(0x7FFF)) | np.uint32(0x8000))


_FM = {"reassoc", "nsz", "contract"}  # lets LLVM vectorise sums; finite inputs only


@njit(cache=True, fastmath=_FM)
def _sum(a):
    s = 0.0
    for i in range(a.shape[0]):
        s += a[i]
    return s


@njit(cache=True, fastmath=_FM)
def _sum_sq_dev(a, mu):
    s = 0.0
    for i in range(a.shape[0]):
        d = a[i] - mu
        s += d * d
    return s


@njit(cache=True)
def _radix_sort_u16(a, tmp, cnt_lo, cnt_hi):
    n = a.shape[0]
    cnt_lo[:] = 0
    cnt_hi[:] = 0
    for i in range(n):
        v = a[i]
        cnt_lo[v & 0xFF] += 1
        cnt_hi[v >> 8] += 1
    s_lo = 0
    s_hi = 0
    for b in range(256):
        c = cnt_lo[b]
        cnt_lo[b] = s_lo
        s_lo += c
        c = cnt_hi[b]
        cnt_hi[b] = s_hi
        s_hi += c
    for i in range(n):
        v = a[i]
        d = v & 0xFF
        tmp[cnt_lo[d]] = v
        cnt_lo[d] += 1
    for i in range(n):
        v = tmp[i]
        d = v >> 8
        a[cnt_hi[d]] = v
        cnt_hi[d] += 1


@njit(cache=True)
def _invalidate(out, j):
    for f in range(N_FIELDS):
        out[f, j] = np.nan
    out[AUC, j] = 0.5
    out[CONSISTENCY, j] = 0.0
    out[VALID, j] = 0.0


@njit(cache=True)
def _stats_sorted(p, q, out, j):
    """All per-neuron statistics from sorted positives ``p`` and negatives ``q``."""
    npos = p.shape[0]
    nneg = q.shape[0]
    nan = np.nan

    # moments, two-pass in float64
    mp = nan
    mn = nan
    vp = nan
    vn = nan
    if npos > 0:
        mp = _sum(p) / npos
        if npos > 1:
            vp = _sum_sq_dev(p, mp) / (npos - 1)
    if nneg > 0:
        mn = _sum(q) / nneg
        if nneg > 1:
            vn = _sum_sq_dev(q, mn) / (nneg - 1)
    sp = np.sqrt(vp)
    sn = np.sqrt(vn)
    out[MEAN_POS, j] = mp
    out[MEAN_NEG, j] = mn
    out[STD_POS, j] = sp
    out[STD_NEG, j] = sn

    # AUC = U / (n+ n-), U = sum over positives of #neg < v + 1/2 #neg == v
    if npos > 0 and nneg > 0:
        lt = 0
        le = 0
        two_u = 0
        for i in range(npos):
            v = p[i]
            while lt < nneg and q[lt] < v:
                lt += 1
            if le < lt:
                le = lt
            while le < nneg and q[le] <= v:
                le += 1
            two_u += lt + le
        out[AUC, j] = two_u / (2.0 * npos * nneg)
    else:
        out[AUC, j] = 0.5

    # 95th percentile of negatives, numpy 'linear' (incl. its lerp rounding)
    thr = nan
    cons = 0.0
    if nneg > 0:
        vi = (nneg - 1) * QUANTILE
        if vi >= nneg - 1:
            thr = q[nneg - 1]
        else:
            lo = int(np.floor(vi))
            g = vi - lo
            a = q[lo]
            b = q[lo + 1]
            diff = b - a
            if g >= 0.5:
                thr = b - diff * (1.0 - g)
            else:
                thr = a + diff * g
        if npos > 0:
            k = npos
            while k > 0 and p[k - 1] > thr:
                k -= 1
            cons = (npos - k) / npos
    out[NEG_P95, j] = thr
    out[CONSISTENCY, j] = cons

    # concept range and overlap of the negatives with it
    rlo = mp - 2.0 * sp
    rhi = mp + 2.0 * sp
    out[RANGE_LO, j] = rlo
    out[RANGE_HI, j] = rhi
    if nneg > 0 and npos > 1:
        a_i = np.searchsorted(q, rlo, side="left")
        b_i = np.searchsorted(q, rhi, side="right")
        out[RANGE_OVERLAP, j] = (b_i - a_i) / nneg
    else:
        out[RANGE_OVERLAP, j] = nan

    # Welch t and Cohen's d
    t = nan
    df = nan
    dd = nan
    if npos > 1 and nneg > 1:
        a1 = vp / npos
        a2 = vn / nneg
        se2 = a1 + a2
        if se2 > 0.0:
            t = (mp - mn) / np.sqrt(se2)
            df = se2 * se2 / (a1 * a1 / (npos - 1) + a2 * a2 / (nneg - 1))
        pooled = ((npos - 1) * vp + (nneg - 1) * vn) / (npos + nneg - 2)
        if pooled > 0.0:
            dd = (mp - mn) / np.sqrt(pooled)
    out[T, j] = t
    out[DF, j] = df
    out[COHENS_D, j] = dd
    out[VALID, j] = 1.0


@njit(parallel=True, cache=True)
def score_f16(X, y, lut):
    """X: [n, m] uint16 (raw fp16 bits), y: [n] uint8 labels -> [N_FIELDS, m]."""
    n, m = X.shape
    npos = 0
    for i in range(n):
        if y[i]:
            npos += 1
    nneg = n - npos
    out = np.empty((N_FIELDS, m), dtype=np.float64)
    ntiles = (m + TILE - 1) // TILE
    for ti in prange(ntiles):
        j0 = ti * TILE
        w = min(TILE, m - j0)
        pk = np.empty((TILE, npos), dtype=np.uint16)
        nk = np.empty((TILE, nneg), dtype=np.uint16)
        expo = np.zeros(TILE, dtype=np.uint16)  # 0x7C00 = inf/NaN seen
        ip = 0
        ineg = 0
        for i in range(n):
            if y[i]:
                for t in range(w):
                    u = X[i, j0 + t]
                    expo[t] = max(expo[t], u & 0x7C00)
                    pk[t, ip] = _f16_key(u)
                ip += 1
            else:
                for t in range(w):
                    u = X[i, j0 + t]
                    expo[t] = max(expo[t], u & 0x7C00)
                    nk[t, ineg] = _f16_key(u)
                ineg += 1
        tmp = np.empty(max(npos, nneg), dtype=np.uint16)
        c1 = np.empty(256, dtype=np.int64)
        c2 = np.empty(256, dtype=np.int64)
        pv = np.empty(npos, dtype=np.float64)
        nv = np.empty(nneg, dtype=np.float64)
        for t in range(w):
            j = j0 + t
            if expo[t] == 0x7C00:
                _invalidate(out, j)
                continue
            a = pk[t]
            _radix_sort_u16(a, tmp, c1, c2)
            for i in range(npos):
                pv[i] = lut[a[i]]
            b = nk[t]
            _radix_sort_u16(b, tmp, c1, c2)
            for i in range(nneg):
                nv[i] = lut[b[i]]
            _stats_sorted(pv, nv, out, j)
    return out


@njit(parallel=True, cache=True)
def score_float(X, y):
    """X: [n, m] float32/float64, y: [n] uint8 labels -> [N_FIELDS, m]."""
    n, m = X.shape
    npos = 0
    for i in range(n):
        if y[i]:
            npos += 1
    nneg = n - npos
    out = np.empty((N_FIELDS, m), dtype=np.float64)
    ntiles = (m + TILE - 1) // TILE
    for ti in prange(ntiles):
        j0 = ti * TILE
        w = min(TILE, m - j0)
        pb = np.empty((TILE, npos), dtype=np.float64)
        nb = np.empty((TILE, nneg), dtype=np.float64)
        bad = np.zeros(TILE, dtype=np.bool_)
        ip = 0
        ineg = 0
        for i in range(n):
            if y[i]:
                for t in range(w):
                    v = np.float64(X[i, j0 + t])
                    if not np.isfinite(v):
                        bad[t] = True
                    pb[t, ip] = v
                ip += 1
            else:
                for t in range(w):
                    v = np.float64(X[i, j0 + t])
                    if not np.isfinite(v):
                        bad[t] = True
                    nb[t, ineg] = v
                ineg += 1
        for t in range(w):
            j = j0 + t
            if bad[t]:
                _invalidate(out, j)
                continue
            a = pb[t]
            a.sort()
            b = nb[t]
            b.sort()
            _stats_sorted(a, b, out, j)
    return out


def score_numpy(acts: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Dispatch on dtype; ``acts`` [n, m] numpy, ``y`` [n] uint8 -> [N_FIELDS, m]."""
    if acts.dtype == np.float16:
        x = np.ascontiguousarray(acts).view(np.uint16)
        return score_f16(x, y, F16_LUT)
    if acts.dtype not in (np.float32, np.float64):
        acts = acts.astype(np.float64)
    return score_float(np.ascontiguousarray(acts), y)
