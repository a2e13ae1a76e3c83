"""What makes an ablated set *validated*: the one definition every surface reads.

* ``p_value`` = (1 + #{controls with drop >= drop}) / (n_controls + 1): the empirical
  p of the drop among its exchangeable, magnitude-matched controls. Under a null where
  the tested set is drawn exactly like its controls it is uniform on {1/(n+1), ..., 1}.
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

__all__ = ["empirical_p", "qvalues", "specificity", "validated"]


def empirical_p(drop: float, null: np.ndarray) -> float:
    """(1 + #{null >= drop}) / (len(null) + 1); a NaN control counts as reaching the drop
    (the conservative side); NaN when the drop is not finite or there are no controls."""
    null = np.asarray(null, dtype=np.float64)
    if not np.isfinite(drop) or null.size == 0:
        return float("nan")
    ge = int(((null >= drop) | np.isnan(null)).sum())
    return (1.0 + ge) / (null.size + 1.0)


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
