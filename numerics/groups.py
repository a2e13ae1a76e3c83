"""Group-level inference: the group, not the example, is the unit of the p-value.

Examples that share a group (a word pair, a template, a subject) are correlated, so
the activations are first reduced to one mean per (group, label) *cell*, a [cells, m]
matrix, and the test runs on those units: it costs cells x m, not n x m.

* paired design (every group holds both labels): d_g = mean(a|g,+) - mean(a|g,-),
  one-sample Student t over the d_g, df = G - 1;
* cell design (otherwise): Welch's t between the + cells and the - cells;
* an example without a group (code -1) is a group of its own, so plain strings
  reduce to Welch on examples.

Both backends reduce to the same cell sums (numba on CPU, torch ``index_add_`` on
the tensor's device); the statistics of the small unit matrix are vectorised numpy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange
from scipy import special

from ._numba_impl import TILE

__all__ = ["Design", "make_design", "cell_means", "group_test", "min_attainable_p"]

# a unit spread below TOL x the largest |cell mean| counts as zero (a perfect or a
# constant neuron), so rounding noise in the cell means cannot pass as a huge t
TOL = 1e-9
# float64 value of every raw fp16 bit pattern (the store's format is read as uint16)
F16_BITS = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float64)


@dataclass(frozen=True)
class Design:
    """How examples map to units. ``cell[i]`` is example i's (group, label) cell."""

    paired: bool
    cell: np.ndarray        # [n] int64, cell index of each example
    count: np.ndarray       # [C] examples per cell
    cell_label: np.ndarray  # [C] 0/1
    cell_group: np.ndarray  # [C] group index of each cell
    n_groups: int

    @property
    def n_cells(self) -> int:
        return int(self.count.shape[0])

    @property
    def n_units(self) -> int:
        """Units of the test: groups (paired) or cells (cell design)."""
        return self.n_groups if self.paired else self.n_cells

    @property
    def n_pos_units(self) -> int:
        return int(self.cell_label.sum())

    def key(self) -> tuple:
        return (self.paired, self.cell.tobytes(), self.cell_label.tobytes())


def make_design(labels, groups=None) -> Design:
    """Build the design from 0/1 labels and integer group codes (-1 = no group)."""
    y = np.asarray(labels).astype(np.int64).ravel()
    n = y.shape[0]
    g = np.full(n, -1, np.int64) if groups is None else np.asarray(groups).astype(np.int64).ravel()
    if g.shape[0] != n:
        raise ValueError(f"groups has {g.shape[0]} entries, labels have {n}")
    # ungrouped examples become groups of their own, numbered after the real ones
    top = int(g.max()) + 1 if n and g.max() >= 0 else 0
    solo = g < 0
    g = g.copy()
    g[solo] = top + np.arange(int(solo.sum()))
    _, gidx = np.unique(g, return_inverse=True)
    key = gidx * 2 + y
    ukey, cell, count = np.unique(key, return_inverse=True, return_counts=True)
    cell_group, cell_label = ukey // 2, ukey % 2
    n_groups = int(gidx.max()) + 1 if n else 0
    per_group = np.bincount(cell_group, minlength=n_groups)
    paired = bool(n_groups >= 1 and np.all(per_group == 2))
    return Design(paired, cell.astype(np.int64), count.astype(np.int64), cell_label.astype(np.int64),
                  cell_group.astype(np.int64), n_groups)


@njit(parallel=True, cache=True)
def _cell_sums_f16(X, cell, n_cells, lut):
    n, m = X.shape
    out = np.zeros((n_cells, m), dtype=np.float64)
    ntiles = (m + TILE - 1) // TILE
    for ti in prange(ntiles):
        j0 = ti * TILE
        j1 = min(m, j0 + TILE)
        for i in range(n):
            c = cell[i]
            for j in range(j0, j1):
                out[c, j] += lut[X[i, j]]
    return out


@njit(parallel=True, cache=True)
def _cell_sums_float(X, cell, n_cells):
    n, m = X.shape
    out = np.zeros((n_cells, m), dtype=np.float64)
    ntiles = (m + TILE - 1) // TILE
    for ti in prange(ntiles):
        j0 = ti * TILE
        j1 = min(m, j0 + TILE)
        for i in range(n):
            c = cell[i]
            for j in range(j0, j1):
                out[c, j] += np.float64(X[i, j])
    return out


def cell_means(acts, design: Design, *, backend: str = "numba") -> np.ndarray:
    """[n, m] activations -> [cells, m] float64 cell means (sums in float64, then / count)."""
    if backend == "torch":
        import torch

        x = acts if type(acts).__module__.startswith("torch") else torch.from_numpy(np.ascontiguousarray(acts))
        idx = torch.as_tensor(design.cell, device=x.device)
        s = torch.zeros((design.n_cells, x.shape[1]), dtype=torch.float64, device=x.device)
        s.index_add_(0, idx, x.detach().to(torch.float64))
        cnt = torch.as_tensor(design.count, dtype=torch.float64, device=x.device)
        return (s / cnt[:, None]).cpu().numpy()
    if type(acts).__module__.startswith("torch"):
        acts = acts.detach().cpu().numpy()
    a = np.ascontiguousarray(acts)
    if a.dtype == np.float16:
        s = _cell_sums_f16(a.view(np.uint16), design.cell, design.n_cells, F16_BITS)
    else:
        if a.dtype not in (np.float32, np.float64):
            a = a.astype(np.float64)
        s = _cell_sums_float(a, design.cell, design.n_cells)
    return s / design.count[:, None]


def _t_p(t, df, alternative):
    """p of t with df; alternative: "two-sided" or a +1/-1 direction per column (one-sided)."""
    ok = np.isfinite(df) & (df > 0) & ~np.isnan(t)
    dfs = np.where(ok, df, 1.0)
    tt = np.where(ok, t, 0.0)
    with np.errstate(invalid="ignore"):
        if isinstance(alternative, str):
            p = 2.0 * special.stdtr(dfs, -np.abs(tt))
        else:
            s = np.asarray(alternative, dtype=np.float64)
            p = special.stdtr(dfs, -s * tt)
            ok &= s != 0
    return np.clip(np.where(ok, p, 1.0), 0.0, 1.0)


def group_test(means: np.ndarray, design: Design, alternative="two-sided") -> dict[str, np.ndarray]:
    """The DESIGN test on [cells, m] cell means.

    Returns ``t``, ``df``, ``p``, ``diff`` (mean d_g, or mean of + cells minus mean of -
    cells), ``effect`` (the standardised group-level effect: mean d_g / sd d_g, Cohen's
    d_z; cell design: diff / the cells' pooled sd) and ``consistency`` (share of groups
    whose d_g > 0; cell design: P(+ cell > - cell), ties 1/2). A zero spread with a
    nonzero diff is a perfect neuron (t and effect = ±inf, p = 0); a zero spread with
    zero diff gives p = 1 and effect 0. ``alternative`` is "two-sided" or a per-column
    direction (+1/-1) for the one-sided test in that direction.
    """
    m = means.shape[1]
    scale = np.max(np.abs(means), axis=0) if means.shape[0] else np.zeros(m)
    pos = design.cell_label == 1
    with np.errstate(divide="ignore", invalid="ignore"):
        if design.paired:
            order = np.lexsort((design.cell_label, design.cell_group))   # (g,-), (g,+) per group
            mm = means[order]
            d = mm[1::2] - mm[0::2]                                          # [G, m]
            G = d.shape[0]
            effect = d.mean(axis=0)
            if G >= 2:
                sd = np.sqrt(((d - effect) ** 2).sum(axis=0) / (G - 1))
                se = sd / math.sqrt(G)
            else:
                sd = se = np.full(m, np.nan)
            df = np.full(m, float(G - 1) if G >= 2 else np.nan)
            spread = sd
            consistency = (d > TOL * scale).mean(axis=0) if G else np.full(m, np.nan)
        else:
            a, b = means[pos], means[~pos]
            na, nb = a.shape[0], b.shape[0]
            ma = a.mean(axis=0) if na else np.full(m, np.nan)
            mb = b.mean(axis=0) if nb else np.full(m, np.nan)
            effect = ma - mb
            if na >= 2 and nb >= 2:
                va = ((a - ma) ** 2).sum(axis=0) / (na - 1) / na
                vb = ((b - mb) ** 2).sum(axis=0) / (nb - 1) / nb
                se = np.sqrt(va + vb)
                df = (va + vb) ** 2 / (va * va / (na - 1) + vb * vb / (nb - 1))
                sd = se
                spread = np.sqrt((va * na + vb * nb) / 2.0)
            else:
                sd = se = df = spread = np.full(m, np.nan)
            consistency = _cell_auc(means, pos)
        flat = np.isfinite(sd) & (sd <= TOL * scale)
        live = np.abs(effect) > TOL * scale
        t = np.where(flat, np.where(live, np.sign(effect) * np.inf, np.nan), effect / se)
        # Welch's df is undefined at zero spread; t = ±inf decides p whatever df is
        df = np.where(flat & live, np.where(np.isfinite(df), df, 1.0), df)
        std = np.where(flat, np.where(live, np.sign(effect) * np.inf, 0.0), effect / spread)
    p = _t_p(t, df, alternative)
    bad = ~np.isfinite(scale)
    p = np.where(bad, 1.0, p)
    t = np.where(bad, np.nan, t)
    std = np.where(bad, np.nan, std)
    return {"t": t, "df": df, "p": p, "diff": effect, "effect": std, "consistency": consistency}


def _cell_auc(means: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """P(a + cell's mean > a - cell's mean) + 1/2 P(=), per column, from ranks."""
    from scipy.stats import rankdata

    k, u = int(pos.sum()), int(pos.shape[0])
    if k == 0 or k == u:
        return np.full(means.shape[1], np.nan)
    r = rankdata(means, axis=0)
    return (r[pos].sum(axis=0) - k * (k + 1) / 2.0) / (k * (u - k))


def min_attainable_p(design: Design) -> float:
    """Smallest two-sided p a perfect neuron can honestly claim with this many units.

    A perfect neuron is one whose units are the most extreme arrangement of the exact
    randomisation test that the t-test approximates: paired, all G signs of d_g agree,
    which 2 of the 2^G sign flips reach (p = 2^-(G-1)); cell design, all + cells above
    all - cells, which 2 of the C(U, U+) relabellings reach (p = 2 / C(U, U+)).
    """
    if design.paired:
        return float(min(1.0, 2.0 ** -(design.n_groups - 1))) if design.n_groups >= 1 else 1.0
    u, k = design.n_cells, design.n_pos_units
    if k == 0 or k == u:
        return 1.0
    return float(min(1.0, 2.0 * math.exp(-(math.lgamma(u + 1) - math.lgamma(k + 1) - math.lgamma(u - k + 1)))))
