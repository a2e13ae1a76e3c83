"""CPU backend of `ScanState.update`: one fused numba pass per batch, parallel over chunks of
neurons, that reads each activation once (and once more, from cache, for the centred squares).

Per chunk of neurons, one walk over the batch's valid tokens accumulates, in loops that
vectorise over the chunk's neurons, the float64 sum, the active count, the token histogram,
the gate/up sign counts and each excerpt's maximum and minimum with their first positions.
Then, neuron by neuron, the batch's excerpts are offered to the top-k (and bottom-k) lists: an
offer is one comparison with the list's last entry, so after the first batches almost nothing
passes and no sort runs; the few that pass are ordered among themselves and merged into the
list in one bottom-up sweep, each row moved at most once. Sample candidates are those whose
key is below their segment's S-th and are inserted in place. The lists keep the torch
backend's order (value desc, excerpt id asc; sample keys asc), so both give the same state.
The same walk sums, in float64, each activation's difference from a shift and its square:
the batch's mean is shift + sum/m and its centred sum of squares sum2 - sum^2/m. The caller
gives the state's running mean as the shift, which lies within a few deviations of the batch's
mean, so nothing cancels; a state with no tokens yet gives none, and a first walk over the
batch finds its exact mean to shift by (the two-pass formula). The caller merges the batch's
moments into the state by Chan's formula.

Values are float32; bins are computed in float32 as ``floor((a - lo) * scale)``, the torch
backend's expression, so they agree bit for bit. A NaN activation lands in the underflow bin.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

CHUNK = 256        # neurons per work item: a token row's 1 KiB run and its counters stay in cache
MASK31 = (1 << 31) - 1


@njit(cache=True, inline="always")
def _col(v, lo, sc, hi):
    """Histogram column of float32 v: floor((v - lo) * sc) clipped to [-1, hi], plus 1 (the
    torch backend's float32 expression); NaN goes to the underflow column. Branch-free."""
    b = np.floor((v - lo) * sc)
    b = b if b >= np.float32(-1.0) else np.float32(-1.0)
    b = b if b <= hi else hi
    return np.int64(b) + 1


@njit(cache=True, inline="always")
def _hash(ex, j):
    """numerics.scan.neuron_hash for one (excerpt id, neuron), in int64 like the torch one."""
    h = (ex + j * 0x9E3779B1) & MASK31
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & MASK31
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & MASK31
    return h ^ (h >> 16)


@njit(cache=True, inline="always")
def _beats(v, eid, v2, eid2):
    """(v, eid) comes before (v2, eid2) in a top list: value desc, then excerpt id asc."""
    return v > v2 or (v == v2 and eid < eid2)


@njit(cache=True)
def _merge_into(val, exs, pos, win, start, j, ev, epos, ex_ids, lengths, x, cand, nc, src):
    """Merge the batch's excerpts cand[:nc] (values ev[e], positions epos[e]; each beats the
    list's last entry) into neuron j's top list, ordered by (value desc, excerpt id asc).
    Windows of new entries are read from x[e, :, j]."""
    k = val.shape[0]
    w = win.shape[1]
    t_n = x.shape[1]
    for a in range(1, nc):                  # order the candidates (a handful) among themselves
        c = cand[a]
        b = a
        while b > 0 and _beats(ev[c], ex_ids[c], ev[cand[b - 1]], ex_ids[cand[b - 1]]):
            cand[b] = cand[b - 1]
            b -= 1
        cand[b] = c
    i = 0                                   # the new list, top down: src >= 0 an old row,
    c = 0                                   # src < 0 candidate -src - 1
    for r in range(k):
        if c < nc and (i >= k or _beats(ev[cand[c]], ex_ids[cand[c]], val[i, j], exs[i, j])):
            src[r] = -c - 1
            c += 1
        else:
            src[r] = i
            i += 1
    for r in range(k - 1, -1, -1):          # bottom up: an old row only moves down, once
        s = src[r]
        if s == r:
            break                           # this row and every one above it are unchanged
        if s >= 0:
            val[r, j] = val[s, j]
            exs[r, j] = exs[s, j]
            pos[r, j] = pos[s, j]
            start[r, j] = start[s, j]
            for q in range(w):
                win[r, q, j] = win[s, q, j]
        else:
            e = cand[-s - 1]
            p = epos[e]
            ln = lengths[e]
            val[r, j] = ev[e]
            exs[r, j] = ex_ids[e]
            pos[r, j] = p
            st = min(max(p - w // 2, 0), max(ln - w, 0))
            start[r, j] = st
            for q in range(w):
                idx = st + q
                win[r, q, j] = x[e, min(idx, t_n - 1), j] if idx < ln else np.nan


@njit(cache=True)
def _offer_batch(val, exs, pos, win, start, j, ev, epos, ex_ids, lengths, x, cand, src):
    """Offer every excerpt of the batch to neuron j's top list (one comparison each)."""
    last = val.shape[0] - 1
    lv = val[last, j]
    le = exs[last, j]
    nc = 0
    for e in range(ev.shape[0]):
        if _beats(ev[e], ex_ids[e], lv, le):
            cand[nc] = e
            nc += 1
    if nc:
        _merge_into(val, exs, pos, win, start, j, ev, epos, ex_ids, lengths, x, cand, nc, src)


@njit(parallel=True, cache=True)
def fold_batch(x, valid, ex_ids, lo, scale, gated, gate, up, with_signs, shift, has_shift,
               mb, m2b, active, hist, hist_max,
               top_val, top_ex, top_pos, top_win, top_start,
               bot_val, bot_ex, bot_pos, bot_win, bot_start,
               s_key, s_val, s_ex, s_pos, signs):
    """Fold one batch x [E, T, N] float32 (valid [E, T] bool, ex_ids [E] int64) into the
    state's arrays in place; mb/m2b [N] receive the batch's float64 mean and centred sum of
    squares, summed around `shift` [N] float64 where `has_shift` (else around the batch's own
    mean, found by a first walk). bot_* are read only when `gated`, gate/up [E, T, N] and signs only when
    `with_signs`. Returns the number of valid tokens."""
    e_n, t_n, n = x.shape
    nb = hist.shape[1]
    last_s = s_key.shape[1] - 1
    lengths = np.zeros(e_n, np.int64)
    for e in range(e_n):
        c = 0
        for t in range(t_n):
            if valid[e, t]:
                c += 1
        lengths[e] = c
    m = lengths.sum()
    hi = np.float32(nb - 2)
    n_chunks = (n + CHUNK - 1) // CHUNK
    for ci in prange(n_chunks):
        j0 = np.int64(ci) * CHUNK        # a signed index: uint64 arithmetic would turn float
        w = min(CHUNK, n - j0)
        lo_c = lo[j0:j0 + w]
        sc_c = scale[j0:j0 + w]
        acc = np.zeros(w, np.float64)
        q = np.zeros(w, np.float64)
        sh = np.zeros(w, np.float64)
        if has_shift:
            for jj in range(w):
                sh[jj] = shift[j0 + jj]
        elif m > 0:                                  # no running mean yet: the batch's own
            for e in range(e_n):
                for t in range(t_n):
                    if valid[e, t]:
                        row = x[e, t, j0:j0 + w]
                        for jj in range(w):
                            sh[jj] += row[jj]
            for jj in range(w):
                sh[jj] /= m
        act = np.zeros(w, np.int64)
        hist_c = np.zeros((nb, w), np.int32)     # [bin, neuron]: neighbours count in neighbours
        sg = np.zeros((4, w), np.int64)
        col = np.empty(w, np.int64)
        mx = np.full((e_n, w), -np.inf, np.float32)
        mxp = np.zeros((e_n, w), np.int64)
        mn = np.full((e_n, w), np.inf, np.float32)
        mnp = np.zeros((e_n, w), np.int64)
        for e in range(e_n):
            mx_e = mx[e]
            mxp_e = mxp[e]
            mn_e = mn[e]
            mnp_e = mnp[e]
            for t in range(t_n):
                if not valid[e, t]:
                    continue
                row = x[e, t, j0:j0 + w]
                for jj in range(w):                  # each of these loops vectorises
                    v = row[jj]
                    d = np.float64(v) - sh[jj]
                    acc[jj] += d
                    q[jj] += d * d
                    act[jj] += np.int64(v > 0)
                    g = v > mx_e[jj]
                    mx_e[jj] = v if g else mx_e[jj]
                    mxp_e[jj] = t if g else mxp_e[jj]
                if gated:
                    for jj in range(w):
                        v = row[jj]
                        g = v < mn_e[jj]
                        mn_e[jj] = v if g else mn_e[jj]
                        mnp_e[jj] = t if g else mnp_e[jj]
                for jj in range(w):
                    col[jj] = _col(row[jj], lo_c[jj], sc_c[jj], hi)
                for jj in range(w):
                    hist_c[col[jj], jj] += 1
                if with_signs:
                    grow = gate[e, t, j0:j0 + w]
                    urow = up[e, t, j0:j0 + w]
                    for jj in range(w):
                        gp = grow[jj] > 0
                        u = urow[jj] > 0
                        sg[0, jj] += np.int64(not gp and not u)
                        sg[1, jj] += np.int64(not gp and u)
                        sg[2, jj] += np.int64(gp and not u)
                        sg[3, jj] += np.int64(gp and u)
        # the batch's float64 mean and centred sum of squares from the shifted sums
        for jj in range(w):
            if m > 0:
                mu = acc[jj] / m
                q[jj] = q[jj] - mu * acc[jj]
                acc[jj] = sh[jj] + mu
            else:
                acc[jj] = 0.0
        # per neuron: counts out, then the batch's excerpts offered to its lists and samples
        cand = np.empty(e_n, np.int64)
        src = np.empty(top_val.shape[0], np.int64)
        ev = np.empty(e_n, np.float32)
        ep = np.empty(e_n, np.int64)
        for jj in range(w):
            j = j0 + jj
            mb[j] = acc[jj]
            m2b[j] = q[jj]
            active[j] += act[jj]
            for b in range(nb):
                hist[j, b] += hist_c[b, jj]
            if with_signs:
                for c in range(4):
                    signs[j, c] += sg[c, jj]
            for e in range(e_n):
                ev[e] = mx[e, jj]
                ep[e] = mxp[e, jj]
            _offer_batch(top_val, top_ex, top_pos, top_win, top_start, j, ev, ep, ex_ids, lengths, x, cand, src)
            for e in range(e_n):
                v = ev[e]
                b = _col(v, lo_c[jj], sc_c[jj], hi)
                hist_max[j, b] += 1
                key = _hash(ex_ids[e], j)
                seg = j * nb + b
                r = last_s
                if key < s_key[seg, r]:              # insert into the segment's ascending keys
                    while r > 0 and key < s_key[seg, r - 1]:
                        s_key[seg, r] = s_key[seg, r - 1]
                        s_val[seg, r] = s_val[seg, r - 1]
                        s_ex[seg, r] = s_ex[seg, r - 1]
                        s_pos[seg, r] = s_pos[seg, r - 1]
                        r -= 1
                    s_key[seg, r] = key
                    s_val[seg, r] = v
                    s_ex[seg, r] = ex_ids[e]
                    s_pos[seg, r] = ep[e]
            if gated:
                for e in range(e_n):
                    ev[e] = -mn[e, jj]
                    ep[e] = mnp[e, jj]
                _offer_batch(bot_val, bot_ex, bot_pos, bot_win, bot_start, j, ev, ep, ex_ids, lengths, x,
                             cand, src)
    return m
