"""Per-neuron concept scores in one streaming pass over the activations.

``score_chunk`` scores a block of neurons (columns) independently of all
others; ``finalize`` combines the blocks of one model x concept and computes
what needs every neuron at once (BH q-values, importance percentile, score,
rank). ``ScoreAccumulator`` wraps both for layer-by-layer streaming.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from neurolens.constants import ALPHA, EFFECT_GATE  # the project's one alpha and effect gate

from . import _numba_impl as _nb
from .groups import Design, cell_means, group_test, make_design
from .peers import PROBE_K, TopColumns, elastic_net_weights, order_ranks, probeless_score
from .stats import bh_qvalues, percentile_rank

__all__ = ["score_chunk", "score_test", "finalize", "ScoreAccumulator", "CHUNK_COLUMNS", "TEST_COLUMNS",
           "TABLE_COLUMNS", "PROBE_K", "order_ranks"]

#: Columns returned by :func:`score_chunk` (one value per neuron each).
CHUNK_COLUMNS = (
    "n_pos", "n_neg", "auc", "selectivity", "mean_pos", "mean_neg", "std_pos", "std_neg",
    "cohens_d", "t", "df", "p_value", "n_units", "effect", "direction", "consistency",
    "tpr_at_5fpr", "neg_p95", "range_lo", "range_hi", "range_overlap", "valid",
)
#: Held-out columns added by :meth:`ScoreAccumulator.add` when a test split is given.
TEST_COLUMNS = ("selectivity_test", "p_test")
#: Columns returned by :func:`finalize` / :meth:`ScoreAccumulator.finalize`.
TABLE_COLUMNS = ("layer", "neuron") + CHUNK_COLUMNS + TEST_COLUMNS + (
    "q_value", "significant", "opposite", "lexical", "q_test", "replicated",
    "importance", "importance_pct", "score", "rank", "rank_probeless", "rank_probe",
)



def _labels(labels, n: int) -> np.ndarray:
    if _is_torch(labels):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels).ravel()
    if y.shape[0] != n:
        raise ValueError(f"labels has {y.shape[0]} entries, activations have {n} rows")
    if y.dtype == bool:
        return y.astype(np.uint8)
    yy = y.astype(np.int64)
    if not np.all((yy == 0) | (yy == 1)) or not np.array_equal(yy, y):
        raise ValueError("labels must be 0/1 (1 = concept example)")
    return yy.astype(np.uint8)


def _is_torch(x) -> bool:
    mod = type(x).__module__
    return mod.startswith("torch")


def _backend(acts, backend: str) -> str:
    if backend == "auto":
        return "torch" if _is_torch(acts) and acts.is_cuda else "numba"
    if backend not in ("numba", "torch"):
        raise ValueError(f"unknown backend {backend!r} (auto, numba, torch)")
    return backend


def _example_stats(acts, y: np.ndarray, backend: str) -> np.ndarray:
    if backend == "numba":
        if _is_torch(acts):
            acts = acts.detach().cpu().numpy()
        return _nb.score_numpy(np.asarray(acts), y)
    import torch

    from ._torch_impl import score_torch

    if not _is_torch(acts):
        acts = torch.from_numpy(np.ascontiguousarray(acts))
    return score_torch(acts.detach(), y)


def score_chunk(acts, labels, *, groups=None, design: Design | None = None,
                backend: str = "auto") -> dict[str, np.ndarray]:
    """Score a block of neurons.

    Parameters
    ----------
    acts : numpy array or torch tensor, shape [n_examples, n_neurons]
        Pooled activations (float16, float32 or float64).
    labels : array of 0/1 (or bool), shape [n_examples]
        1 = concept example, 0 = other.
    groups : int array [n_examples] or None
        Group code per example, -1 = no group (a group of its own). None: every
        example is its own group (Welch on examples). ``design`` (from
        :func:`make_design`) may be passed instead, to build it once for many chunks.
    backend : "auto" | "numba" | "torch"
        "auto" picks torch for a CUDA tensor, numba otherwise. "torch" runs on
        the tensor's device (a numpy input goes to the CPU).

    Returns
    -------
    dict of 1-D numpy arrays of length n_neurons, keys :data:`CHUNK_COLUMNS`.
    """
    if acts.ndim != 2:
        raise ValueError(f"acts must be 2-D [n_examples, n_neurons], got shape {tuple(acts.shape)}")
    n, m = int(acts.shape[0]), int(acts.shape[1])
    y = _labels(labels, n)
    backend = _backend(acts, backend)
    design = design if design is not None else make_design(y, groups)
    if design.cell.shape[0] != n:
        raise ValueError(f"the design has {design.cell.shape[0]} examples, activations have {n} rows")
    res = _example_stats(acts, y, backend)

    out: dict[str, np.ndarray] = {}
    npos = int(y.sum())
    out["n_pos"] = np.full(m, npos, dtype=np.int64)
    out["n_neg"] = np.full(m, n - npos, dtype=np.int64)
    for k, name in enumerate(_nb.FIELD_NAMES):
        # the kernels' "consistency" is the TPR at the negatives' 95th percentile; DESIGN's
        # consistency is the share of groups with the concept's sign (the group test's)
        out["tpr_at_5fpr" if name == "consistency" else name] = res[k]
    out["valid"] = res[_nb.VALID] > 0.5
    out["selectivity"] = 2.0 * out["auc"] - 1.0
    g = group_test(cell_means(acts, design, backend=backend), design)
    p = g["p"]
    p[~out["valid"]] = 1.0
    out["t"], out["df"], out["p_value"], out["effect"] = g["t"], g["df"], p, g["effect"]
    out["direction"] = np.where(g["diff"] > 0, 1, -1).astype(np.int8)
    out["consistency"] = np.where(out["valid"], g["consistency"], 0.0)
    out["n_units"] = np.full(m, design.n_units, dtype=np.int64)
    return {k: out[k] for k in CHUNK_COLUMNS}


def score_test(acts, labels, direction, *, groups=None, design: Design | None = None,
               backend: str = "auto", alpha: float = 0.05) -> dict[str, np.ndarray]:
    """Held-out statistics on the test split: ``selectivity_test`` (example AUC) and
    ``p_test`` (the group-level test, one-sided in ``direction``, the sign of the train
    effect per neuron). ``q_test`` and ``replicated`` need the tested set: :func:`finalize`."""
    n = int(acts.shape[0])
    y = _labels(labels, n)
    backend = _backend(acts, backend)
    design = design if design is not None else make_design(y, groups)
    res = _example_stats(acts, y, backend)
    valid = res[_nb.VALID] > 0.5
    sel = 2.0 * res[_nb.AUC] - 1.0
    s = np.sign(np.nan_to_num(np.asarray(direction, dtype=np.float64)))
    p = group_test(cell_means(acts, design, backend=backend), design, alternative=s)["p"]
    p[~valid] = 1.0
    sel = np.where(valid, sel, np.nan)
    return {"selectivity_test": sel, "p_test": p}


def finalize(per_layer_results: Sequence[Mapping[str, np.ndarray]], importance=None,
             *, alpha: float = ALPHA, probe_weights=None, lexical=None,
             gate: float = EFFECT_GATE) -> dict[str, np.ndarray]:
    """Combine scored blocks of one model x concept into the final columns.

    ``per_layer_results`` are :func:`score_chunk` outputs (optionally with
    ``layer`` and ``neuron`` columns) in neuron order (layer, then neuron).
    ``importance`` is None or a vector aligned with the concatenation;
    ``probe_weights`` likewise (|weight| of the elastic-net probe, NaN = not fitted).

    ``lexical`` is None or a bool vector aligned likewise: the rows significant on the
    concept's lexical control (they answer the word swap, not the concept).

    Adds ``q_value`` (BH over all rows); ``significant`` = q_value < alpha, direction +1
    and effect >= ``gate``; ``opposite`` = the same in direction -1 (counted apart, never
    ranked); ``lexical``; ``importance``, ``importance_pct``, ``score`` and ``rank`` (1, 2,
    ... among significant rows that are not lexical, by descending score, ties by row
    order; -1 for the others); ``q_test`` (BH over the ranked rows' held-out p_test, NaN
    elsewhere) and ``replicated`` (q_test < alpha); ``rank_probeless``
    (all valid rows by |mean_pos - mean_neg|) and ``rank_probe`` (fitted rows by
    |weight|, -1 for the others).
    """
    if not per_layer_results:
        raise ValueError("nothing to finalize")
    keys = list(per_layer_results[0].keys())
    cols = {k: np.concatenate([np.asarray(r[k]) for r in per_layer_results]) for k in keys}
    total = cols["auc"].shape[0]

    cols["q_value"] = bh_qvalues(cols["p_value"])
    sel_pos = np.maximum(cols["selectivity"], 0.0)
    if importance is None:
        cols["importance"] = np.full(total, np.nan)
        cols["importance_pct"] = np.full(total, np.nan)
        score = np.sqrt(sel_pos * cols["consistency"])
    else:
        imp = np.asarray(importance, dtype=np.float64).ravel()
        if imp.shape[0] != total:
            raise ValueError(f"importance has {imp.shape[0]} entries, expected {total}")
        cols["importance"] = imp
        cols["importance_pct"] = percentile_rank(imp)
        score = np.cbrt(sel_pos * cols["consistency"] * cols["importance_pct"])
    cols["score"] = score

    valid = np.asarray(cols["valid"], bool) if "valid" in cols else np.ones(total, bool)
    strong = valid & (cols["q_value"] < alpha) & (np.abs(np.nan_to_num(cols["effect"])) >= gate)
    cols["significant"] = strong & (cols["direction"] > 0) & (cols["effect"] > 0)
    cols["opposite"] = strong & (cols["direction"] < 0) & (cols["effect"] < 0)
    lex = np.zeros(total, bool) if lexical is None else np.asarray(lexical, bool).ravel()
    if lex.shape[0] != total:
        raise ValueError(f"lexical has {lex.shape[0]} entries, expected {total}")
    cols["lexical"] = lex
    rank = np.full(total, -1, dtype=np.int64)
    sig = np.flatnonzero(cols["significant"] & ~lex)
    order = sig[np.argsort(-score[sig], kind="stable")]
    rank[order] = np.arange(1, order.size + 1)
    cols["rank"] = rank
    q_test = np.full(total, np.nan)
    if "p_test" in cols:
        tested = sig[np.isfinite(np.asarray(cols["p_test"], np.float64)[sig])]
        if tested.size:
            q_test[tested] = bh_qvalues(np.asarray(cols["p_test"], np.float64)[tested])
    cols["q_test"] = q_test
    cols["replicated"] = q_test < alpha
    cols["rank_probeless"] = order_ranks(probeless_score(cols["mean_pos"], cols["mean_neg"]), valid=valid)
    if probe_weights is None:
        cols["rank_probe"] = np.full(total, -1, dtype=np.int64)
    else:
        w = np.asarray(probe_weights, np.float64).ravel()
        if w.shape[0] != total:
            raise ValueError(f"probe_weights has {w.shape[0]} entries, expected {total}")
        # ties (e.g. weights the L1 part set to 0) go by the probeless order
        tie = np.where(cols["rank_probeless"] > 0, cols["rank_probeless"], total + 1)
        fitted = np.flatnonzero(np.isfinite(w))
        o = fitted[np.lexsort((tie[fitted], -w[fitted]))]
        rp = np.full(total, -1, dtype=np.int64)
        rp[o] = np.arange(1, o.size + 1)
        cols["rank_probe"] = rp
    for c in TEST_COLUMNS:
        if c not in cols:
            cols[c] = np.full(total, np.nan)
    return cols


class ScoreAccumulator:
    """Stream layers (or column chunks of layers) in, get one score table out.

    >>> acc = ScoreAccumulator()
    >>> for layer, acts in layers:                   # doctest: +SKIP
    ...     acc.add(layer, acts, labels, groups=g, test=(acts_t, labels_t, g_t))
    >>> table = acc.finalize(importance=imp)          # doctest: +SKIP

    ``add(layer, acts, labels, neuron_offset=k)`` scores columns
    ``k .. k+acts.shape[1]-1`` of ``layer``; chunks may come in any order.
    All chunks must use the same labels and groups (the same examples). ``test``
    (activations, labels, groups of the held-out split, same columns) adds the
    replication columns. ``probe_k`` > 0 keeps the best ``probe_k`` columns by the
    probeless score and fits the elastic-net probe on them in ``finalize``.
    ``finalize`` sorts rows by (layer, neuron) and returns :data:`TABLE_COLUMNS`.
    Only per-neuron summaries (and the probe's candidate columns) are kept.
    """

    def __init__(self, *, backend: str = "auto", alpha: float = ALPHA, probe_k: int = 0):
        self.backend = backend
        self.alpha = alpha
        self._parts: list[dict[str, np.ndarray]] = []
        self._labels: np.ndarray | None = None
        self._design: Design | None = None
        self._test_design: tuple | None = None
        self._top = TopColumns(probe_k)
        self.seconds_probe = 0.0

    def _designs(self, y: np.ndarray, groups) -> Design:
        d = make_design(y, groups)
        if self._labels is None:
            self._labels, self._design = y, d
        elif not np.array_equal(self._labels, y) or d.key() != self._design.key():
            raise ValueError("all chunks of one model x concept must use the same labels and groups")
        return self._design

    def add(self, layer: int, acts, labels, *, groups=None, neuron_offset: int = 0,
            test=None) -> dict[str, np.ndarray]:
        y = _labels(labels, int(acts.shape[0]))
        design = self._designs(y, groups)
        res = score_chunk(acts, y, design=design, backend=self.backend)
        m = res["auc"].shape[0]
        part = {"layer": np.full(m, int(layer), dtype=np.int64),
                "neuron": np.arange(neuron_offset, neuron_offset + m, dtype=np.int64)}
        part.update(res)
        if test is not None:
            xt, yt, gt = test
            yt = _labels(yt, int(xt.shape[0]))
            if self._test_design is None:
                self._test_design = (yt, make_design(yt, gt))
            part.update(score_test(xt, yt, res["direction"], design=self._test_design[1],
                                   backend=self.backend, alpha=self.alpha))
        if self._top.k > 0:
            row = len(self._parts)  # (part, column) -> resolved in finalize
            ids = row * (1 << 32) + np.arange(m, dtype=np.int64)
            sc = probeless_score(res["mean_pos"], res["mean_neg"])
            self._top.add(sc, ids, acts)
        self._parts.append(part)
        return part

    @property
    def n_neurons(self) -> int:
        return sum(p["auc"].shape[0] for p in self._parts)

    @property
    def design(self) -> Design | None:
        return self._design

    def _probe_weights(self, order: np.ndarray) -> np.ndarray | None:
        if self._top.k <= 0 or self._top.cols is None:
            return None
        import time

        t0 = time.perf_counter()
        w = elastic_net_weights(self._top.cols, self._labels)
        self.seconds_probe = time.perf_counter() - t0
        starts = np.cumsum([0] + [p["auc"].shape[0] for p in self._parts])
        flat = starts[self._top.rows >> 32] + (self._top.rows & ((1 << 32) - 1))
        out = np.full(starts[-1], np.nan)
        out[flat] = w
        return out[order]

    def finalize(self, importance=None, lexical=None) -> dict[str, np.ndarray]:
        """``importance``: None, a vector in (layer, neuron) order, or {layer: vector};
        ``lexical``: None or a bool vector in (layer, neuron) order."""
        if not self._parts:
            raise ValueError("no activations were added")
        layer = np.concatenate([p["layer"] for p in self._parts])
        neuron = np.concatenate([p["neuron"] for p in self._parts])
        order = np.lexsort((neuron, layer))
        if np.any((np.diff(layer[order]) == 0) & (np.diff(neuron[order]) == 0)):
            raise ValueError("the same (layer, neuron) was added twice")
        keys = set.intersection(*(set(p) for p in self._parts))
        merged = {k: np.concatenate([p[k] for p in self._parts])[order]
                  for k in self._parts[0] if k in keys}
        if isinstance(importance, Mapping):
            imp = np.full(layer.shape[0], np.nan)
            ls, ns = merged["layer"], merged["neuron"]
            for lay, vec in importance.items():
                sel = ls == int(lay)
                imp[sel] = np.asarray(vec, dtype=np.float64).ravel()[ns[sel]]
            importance = imp
        cols = finalize([merged], importance, alpha=self.alpha, probe_weights=self._probe_weights(order),
                        lexical=lexical)
        return {k: cols[k] for k in TABLE_COLUMNS}
