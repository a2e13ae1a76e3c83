"""What makes an ablated set *validated*: the one definition every surface reads.

* ``p_value`` = (1 + #{controls with drop >= drop}) / (n_controls + 1): the empirical
  p of the drop among its exchangeable, magnitude-matched controls. Under a null where
  the tested set is drawn exactly like its controls it is uniform on {1/(n+1), ..., 1}.
  Measured sequentially (Besag & Clifford 1991, `sequential_p`): the controls in their
  drawn order, stopping at the h-th that reaches the drop, p = h / (controls measured).
  With h = `stop_after(N)` = floor(ALPHA · N) + 1 a stopped set has p >= h / N > ALPHA,
  and would have had p >= (h + 1) / (N + 1) > ALPHA with every control: the verdicts
  are those of all N controls, at the cost of the controls the decision needs.
* ``q_value``: Benjamini–Hochberg over the sets tested for one model × concept and
  method (the top singles and the curve's prefixes).
* ``specificity`` = drop / max(off_target_drop, OFF_TARGET_FLOOR): how much more the
  concept examples lose than the others. The floor keeps the ratio meaningful where the
  others lose nothing or gain (a negative denominator would flip its sign).
* ``validated`` = q_value < ALPHA and specificity > SPECIFICITY_MIN, both finite. NaN
  and ±inf never validate.

The ablation stage writes all four into the `ablations` table; the CLI, the API, the
named queries, the reports, the sweep table and selfcheck read that column or call
`validated` here, and nothing else decides it.
"""
from __future__ import annotations

import numpy as np

from neurolens.constants import ALPHA, OFF_TARGET_FLOOR, SPECIFICITY_MIN
from neurolens.numerics.stats import bh_qvalues

__all__ = ["empirical_p", "qvalues", "sequential_p", "specificity", "stop_after", "stop_index",
           "validated"]


def empirical_p(drop: float, null: np.ndarray) -> float:
    """(1 + #{null >= drop}) / (len(null) + 1); a NaN control counts as reaching the drop
    (the conservative side); NaN when the drop is not finite or there are no controls."""
    null = np.asarray(null, dtype=np.float64)
    if not np.isfinite(drop) or null.size == 0:
        return float("nan")
    ge = int(((null >= drop) | np.isnan(null)).sum())
    return (1.0 + ge) / (null.size + 1.0)


def stop_after(n_controls: int) -> int:
    """h, the exceedances after which a set's test stops: the fewest that already put its p
    above ALPHA whatever the other controls would give (so no verdict changes)."""
    return int(np.floor(ALPHA * n_controls)) + 1


def stop_index(drop: float, null: np.ndarray, h: int | None, n_controls: int | None = None) -> int | None:
    """How many of the ordered controls the sequential test reads: up to the h-th that
    reaches `drop` (a NaN control counts as reaching it), else all `n_controls` (default:
    those given); none for a drop that is not finite (its p is NaN whatever the controls).
    None while the controls given, the first of n_controls, do not decide it yet."""
    null = np.asarray(null, dtype=np.float64)
    n = null.size if n_controls is None else int(n_controls)
    if not np.isfinite(drop):
        return 0
    if h is not None:
        hit = np.flatnonzero(np.cumsum((null >= drop) | np.isnan(null)) >= h)
        if hit.size:
            return int(hit[0]) + 1
    return n if null.size >= n else None


def sequential_p(drop: float, null: np.ndarray, h: int | None) -> float:
    """Besag–Clifford's sequential Monte Carlo p of `drop` against controls in their drawn
    order: h / L where the h-th control reaching the drop is the L-th; otherwise (fewer
    than h reach it among all of them) the empirical p. h None: the empirical p."""
    null = np.asarray(null, dtype=np.float64)
    if h is None or not np.isfinite(drop) or null.size == 0:
        return empirical_p(drop, null)
    L = stop_index(drop, null, h)
    reached = int(((null[:L] >= drop) | np.isnan(null[:L])).sum())
    return h / L if reached >= h else empirical_p(drop, null)


def qvalues(p) -> np.ndarray:
    """BH q-values; a NaN p stays NaN (it was not tested), the others are corrected
    over every entry (a NaN counted as p = 1, so it still widens the family)."""
    p = np.asarray(p, dtype=np.float64)
    q = bh_qvalues(p)
    return np.where(np.isnan(p), np.nan, q)


def specificity(drop, off_target_drop):
    """drop / max(off_target_drop, OFF_TARGET_FLOOR); NaN where either is missing."""
    d = np.asarray(drop, dtype=np.float64)
    o = np.asarray(off_target_drop, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return d / np.maximum(o, OFF_TARGET_FLOOR)  # NaN propagates through maximum


def validated(q_value, spec):
    """q < ALPHA and specificity > SPECIFICITY_MIN, both finite (NaN/inf: False)."""
    q = np.asarray(q_value, dtype=np.float64)
    s = np.asarray(spec, dtype=np.float64)
    return np.isfinite(q) & np.isfinite(s) & (q < ALPHA) & (s > SPECIFICITY_MIN)
