"""Vectorised statistics helpers shared by the scoring backends.

Everything here works on whole vectors of neurons at once (no Python loop over
neurons) and returns float64 numpy arrays.
"""

from __future__ import annotations

import numpy as np
from scipy import special

__all__ = ["welch_t", "welch_p", "bh_qvalues", "percentile_rank", "average_ranks"]


def welch_t(mean_pos, mean_neg, var_pos, var_neg, n_pos, n_neg):
    """Welch's t statistic and Welch–Satterthwaite degrees of freedom.

    Returns ``(t, df)``. Both are NaN where the test is undefined: a group with
    fewer than 2 examples, or zero variance in both groups (a constant neuron).
    """
    mean_pos = np.asarray(mean_pos, dtype=np.float64)
    mean_neg = np.asarray(mean_neg, dtype=np.float64)
    n_pos = np.asarray(n_pos, dtype=np.float64)
    n_neg = np.asarray(n_neg, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a1 = np.asarray(var_pos, dtype=np.float64) / n_pos
        a2 = np.asarray(var_neg, dtype=np.float64) / n_neg
        se2 = a1 + a2
        ok = (n_pos >= 2) & (n_neg >= 2) & np.isfinite(se2) & (se2 > 0)
        t = np.where(ok, (mean_pos - mean_neg) / np.sqrt(se2), np.nan)
        df = np.where(ok, se2 * se2 / (a1 * a1 / (n_pos - 1) + a2 * a2 / (n_neg - 1)), np.nan)
    return t, df


def welch_p(t, df):
    """Two-sided p-value of a t statistic with ``df`` degrees of freedom.

    ``2 * stdtr(df, -|t|)``, vectorised. Undefined inputs (NaN ``t`` or
    ``df``, ``df <= 0``) give ``p = 1``: such a neuron never passes as
    significant.
    """
    t = np.asarray(t, dtype=np.float64)
    df = np.asarray(df, dtype=np.float64)
    ok = np.isfinite(df) & (df > 0) & ~np.isnan(t)
    with np.errstate(invalid="ignore"):
        p = 2.0 * special.stdtr(np.where(ok, df, 1.0), -np.abs(np.where(ok, t, 0.0)))
    p = np.where(ok, p, 1.0)
    return np.clip(p, 0.0, 1.0)


def bh_qvalues(p):
    """Benjamini–Hochberg adjusted p-values (q-values) over all entries of ``p``.

    Same as ``scipy.stats.false_discovery_control(p, method='bh')``; NaN
    p-values are treated as 1.
    """
    p = np.asarray(p, dtype=np.float64).ravel()
    m = p.size
    if m == 0:
        return p.copy()
    p = np.where(np.isnan(p), 1.0, np.clip(p, 0.0, 1.0))
    order = np.argsort(p, kind="stable")
    ps = p[order] * (m / np.arange(1, m + 1, dtype=np.float64))
    qs = np.minimum.accumulate(ps[::-1])[::-1]
    q = np.empty(m, dtype=np.float64)
    q[order] = np.minimum(qs, 1.0)
    return q


def average_ranks(x):
    """1-based ranks of a 1-D float array, ties get the average of their ranks."""
    x = np.asarray(x).ravel()
    n = x.size
    ranks = np.empty(n, dtype=np.float64)
    if n == 0:
        return ranks
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.concatenate(([0], np.flatnonzero(xs[1:] != xs[:-1]) + 1))
    ends = np.concatenate((starts[1:], [n]))
    avg = (starts + 1 + ends) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def percentile_rank(x):
    """Percentile of each entry within ``x``, in (0, 1].

    ``average rank / number of finite entries`` (ties get their average rank;
    the largest value gets 1). NaN or infinite entries get 0 and do not count.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    out = np.zeros(x.size, dtype=np.float64)
    ok = np.isfinite(x)
    k = int(ok.sum())
    if k:
        out[ok] = average_ranks(x[ok]) / k
    return out
