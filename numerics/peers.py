"""The peer rankings beside ours, from the same train activations (NeuroX, Dalvi et al.).

* probeless (Antverg & Belinkov 2022): for binary labels, |mean_pos - mean_neg|;
* elastic-net linear probe: logistic regression with an L1 + L2 penalty on
  standardised activations, neurons ranked by |weight|. The fit is bounded: it sees
  only the ``k`` best neurons by the probeless score (kept while streaming by
  :class:`TopColumns`). It is scikit-learn's problem (``LogisticRegression(l1_ratio,
  C)``) solved to its optimality conditions by proximal Newton (``_enet_numba``), not
  by saga: saga stopped unconverged at its epoch cap and took seconds.
"""
from __future__ import annotations

import numpy as np

__all__ = ["probeless_score", "order_ranks", "TopColumns", "elastic_net_weights",
           "PROBE_K", "L1_RATIO", "C", "MAX_ITER", "TOL"]

PROBE_K = 2000    # neurons the elastic-net probe is fitted on (the best by probeless score)
L1_RATIO = 0.5    # elastic-net mixing: half L1, half L2
C = 0.05          # inverse penalty strength (sklearn's convention)
MAX_ITER = 100    # proximal Newton steps at most (it converges in a handful)
TOL = 1e-3        # largest violation of the optimality conditions, in summed-loss gradient units
MAX_SWEEPS = 10_000   # coordinate-descent sweeps at most within one Newton step


def probeless_score(mean_pos, mean_neg) -> np.ndarray:
    """|mean_pos - mean_neg| per neuron; NaN (invalid neuron) -> -inf, ranked last."""
    d = np.abs(np.asarray(mean_pos, np.float64) - np.asarray(mean_neg, np.float64))
    return np.where(np.isfinite(d), d, -np.inf)


def order_ranks(score, *, valid=None) -> np.ndarray:
    """1 = best (largest score), ties by position; -1 where ``valid`` is False."""
    score = np.asarray(score, np.float64)
    valid = np.ones(score.shape[0], bool) if valid is None else np.asarray(valid, bool)
    rank = np.full(score.shape[0], -1, np.int64)
    idx = np.flatnonzero(valid)
    order = idx[np.argsort(-score[idx], kind="stable")]
    rank[order] = np.arange(1, order.size + 1)
    return rank


class TopColumns:
    """The ``k`` best columns (by a score) seen so far, and where they came from.

    Each ``add`` takes from a chunk only the columns that beat the worst kept one, and
    writes them over the columns they evict, so memory stays at n_examples x k and a chunk
    costs a gather of its entering columns alone (gathering every kept column again on
    every chunk took a third of a GPT-2 scoring pass). ``cols``, ``score`` and ``rows`` are
    in the order a full sort would give: best first, ties by arrival (kept before new, then
    position), which is also ``rows``'s order, since the caller numbers rows by arrival.
    """

    def __init__(self, k: int):
        self.k = int(k)
        self._score = np.empty(0)
        self._rows = np.empty(0, np.int64)      # global row ids (set by the caller)
        self._cols: np.ndarray | None = None    # [n, kept] float32, in no particular order
        self._sorted: tuple | None = None

    def _take(self, cols, keep: np.ndarray) -> np.ndarray:
        if type(cols).__module__.startswith("torch"):
            import torch

            cols = cols[:, torch.as_tensor(keep, device=cols.device)].detach().cpu().numpy()
        else:
            cols = np.asarray(cols)[:, keep]
        return cols.astype(np.float32)

    def add(self, score: np.ndarray, rows: np.ndarray, cols) -> None:
        if self.k <= 0:
            return
        score, rows = np.asarray(score), np.asarray(rows)
        full = self._score.size >= self.k
        # a column that only ties the worst kept one loses to it (kept ones came first)
        cand = np.flatnonzero(score > self._score.min()) if full else np.arange(score.size)
        if cand.size == 0:
            return
        keep = cand[np.argsort(-score[cand], kind="stable")[: self.k]]
        new = self._take(cols, keep)
        s = np.concatenate([self._score, score[keep]])
        r = np.concatenate([self._rows, rows[keep]])
        best = np.lexsort((r, -s))[: self.k]       # by score, ties by arrival
        self._sorted = None
        if not full:                               # filling: keep what is best, in any order
            allc = new if self._cols is None else np.concatenate([self._cols, new], axis=1)
            self._cols, self._score, self._rows = allc[:, best], s[best], r[best]
            return
        n_old = self._score.size
        enter = best[best >= n_old]
        out = np.setdiff1d(np.arange(n_old), best[best < n_old], assume_unique=True)
        self._cols[:, out] = new[:, enter - n_old]
        self._score[out], self._rows[out] = s[enter], r[enter]

    def _order(self) -> tuple:
        if self._sorted is None:
            o = np.lexsort((self._rows, -self._score))
            cols = None if self._cols is None else np.ascontiguousarray(self._cols[:, o])
            self._sorted = (cols, self._score[o], self._rows[o])
        return self._sorted

    @property
    def cols(self) -> np.ndarray | None:
        return self._order()[0]

    @property
    def score(self) -> np.ndarray:
        return self._order()[1]

    @property
    def rows(self) -> np.ndarray:
        return self._order()[2]


def elastic_net_weights(x: np.ndarray, y: np.ndarray, *, l1_ratio: float = L1_RATIO, c: float = C,
                        max_iter: int = MAX_ITER, tol: float = TOL) -> np.ndarray:
    """|weight| per column of a logistic elastic-net probe on standardised ``x`` [n, k].

    The minimiser of ``c * sum(log-loss) + (1 - l1_ratio) / 2 |w|^2 + l1_ratio |w|_1``
    (scikit-learn's objective), with an unpenalised intercept.
    """
    from ._enet_numba import enet_logistic

    x = np.asarray(x)
    y = np.asarray(y).astype(np.float64)
    if x.shape[1] == 0 or y.min() == y.max():
        return np.zeros(x.shape[1])
    x64 = x.astype(np.float64)
    mu = x64.mean(axis=0)
    sd = x64.std(axis=0)
    ok = np.isfinite(sd) & (sd > 0)
    # features as rows: each coordinate step reads one contiguous column of z
    zt = np.zeros((x.shape[1], x.shape[0]))
    zt[ok] = ((x64[:, ok] - mu[ok]) / sd[ok]).T
    w, _, _, _ = enet_logistic(zt, y, l1_ratio / c, (1.0 - l1_ratio) / c, tol, max_iter, MAX_SWEEPS)
    return np.abs(w)
