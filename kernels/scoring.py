"""Per-neuron concept scores in one streaming pass over the activations.

``score_chunk`` scores a block of neurons (columns) independently of all
others; ``finalize`` combines the blocks of one model x concept and computes
what needs every neuron at once (BH q-values, importance percentile, score,
rank). ``ScoreAccumulator`` wraps both for layer-by-layer streaming.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from neurolens.constants import ALPHA  # the project's one alpha

from . import _numba_impl as _nb
from .stats import bh_qvalues, percentile_rank, welch_p

__all__ = ["score_chunk", "finalize", "ScoreAccumulator", "CHUNK_COLUMNS", "TABLE_COLUMNS"]

#: Columns returned by :func:`score_chunk` (one value per neuron each).
CHUNK_COLUMNS = (
    "n_pos", "n_neg", "auc", "selectivity", "mean_pos", "mean_neg", "std_pos", "std_neg",
    "cohens_d", "t", "df", "p_value", "consistency", "neg_p95",
    "range_lo", "range_hi", "range_overlap", "valid",
)
#: Columns returned by :func:`finalize` / :meth:`ScoreAccumulator.finalize`.
TABLE_COLUMNS = ("layer", "neuron") + CHUNK_COLUMNS + (
    "q_value", "importance", "importance_pct", "score", "rank",
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


def score_chunk(acts, labels, *, backend: str = "auto") -> dict[str, np.ndarray]:
    """Score a block of neurons.

    Parameters
    ----------
    acts : numpy array or torch tensor, shape [n_examples, n_neurons]
        Pooled activations (float16, float32 or float64).
    labels : array of 0/1 (or bool), shape [n_examples]
        1 = concept example, 0 = other.
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
    if backend == "auto":
        backend = "torch" if _is_torch(acts) and acts.is_cuda else "numba"
    if backend == "numba":
        if _is_torch(acts):
            acts = acts.detach().cpu().numpy()
        res = _nb.score_numpy(np.asarray(acts), y)
    elif backend == "torch":
        import torch

        from ._torch_impl import score_torch

        if not _is_torch(acts):
            acts = torch.from_numpy(np.ascontiguousarray(acts))
        res = score_torch(acts.detach(), y)
    else:
        raise ValueError(f"unknown backend {backend!r} (auto, numba, torch)")

    out: dict[str, np.ndarray] = {}
    npos = int(y.sum())
    out["n_pos"] = np.full(m, npos, dtype=np.int64)
    out["n_neg"] = np.full(m, n - npos, dtype=np.int64)
    for k, name in enumerate(_nb.FIELD_NAMES):
        out[name] = res[k]
    out["valid"] = res[_nb.VALID] > 0.5
    out["selectivity"] = 2.0 * out["auc"] - 1.0
    p = welch_p(out["t"], out["df"])
    p[~out["valid"]] = 1.0
    out["p_value"] = p
    return {k: out[k] for k in CHUNK_COLUMNS}


def finalize(per_layer_results: Sequence[Mapping[str, np.ndarray]], importance=None,
             *, alpha: float = ALPHA) -> dict[str, np.ndarray]:
    """Combine scored blocks of one model x concept into the final columns.

    ``per_layer_results`` are :func:`score_chunk` outputs (optionally with
    ``layer`` and ``neuron`` columns) in neuron order (layer, then neuron).
    ``importance`` is None or a vector aligned with the concatenation.

    Adds ``q_value`` (BH over all rows), ``importance``, ``importance_pct``,
    ``score`` and ``rank`` (1, 2, ... among rows with q_value < alpha by
    descending score, ties by row order; -1 for the others).
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

    rank = np.full(total, -1, dtype=np.int64)
    sig = np.flatnonzero(cols["q_value"] < alpha)
    order = sig[np.argsort(-score[sig], kind="stable")]
    rank[order] = np.arange(1, order.size + 1)
    cols["rank"] = rank
    return cols


class ScoreAccumulator:
    """Stream layers (or column chunks of layers) in, get one score table out.

    >>> acc = ScoreAccumulator()
    >>> for layer, acts in layers:                   # doctest: +SKIP
    ...     acc.add(layer, acts, labels)
    >>> table = acc.finalize(importance=imp)          # doctest: +SKIP

    ``add(layer, acts, labels, neuron_offset=k)`` scores columns
    ``k .. k+acts.shape[1]-1`` of ``layer``; chunks may come in any order.
    All chunks must use the same labels (the same examples). ``finalize``
    sorts rows by (layer, neuron) and returns :data:`TABLE_COLUMNS`.
    Only per-neuron summaries are kept, never the activations.
    """

    def __init__(self, *, backend: str = "auto", alpha: float = ALPHA):
        self.backend = backend
        self.alpha = alpha
        self._parts: list[dict[str, np.ndarray]] = []
        self._labels: np.ndarray | None = None

    def add(self, layer: int, acts, labels, *, neuron_offset: int = 0) -> dict[str, np.ndarray]:
        y = _labels(labels, int(acts.shape[0]))
        if self._labels is None:
            self._labels = y
        elif not np.array_equal(self._labels, y):
            raise ValueError("all chunks of one model x concept must use the same labels")
        res = score_chunk(acts, y, backend=self.backend)
        m = res["auc"].shape[0]
        part = {"layer": np.full(m, int(layer), dtype=np.int64),
                "neuron": np.arange(neuron_offset, neuron_offset + m, dtype=np.int64)}
        part.update(res)
        self._parts.append(part)
        return part

    @property
    def n_neurons(self) -> int:
        return sum(p["auc"].shape[0] for p in self._parts)

    def finalize(self, importance=None) -> dict[str, np.ndarray]:
        """``importance``: None, a vector in (layer, neuron) order, or {layer: vector}."""
        if not self._parts:
            raise ValueError("no activations were added")
        layer = np.concatenate([p["layer"] for p in self._parts])
        neuron = np.concatenate([p["neuron"] for p in self._parts])
        order = np.lexsort((neuron, layer))
        if np.any((np.diff(layer[order]) == 0) & (np.diff(neuron[order]) == 0)):
            raise ValueError("the same (layer, neuron) was added twice")
        merged = {k: np.concatenate([p[k] for p in self._parts])[order] for k in self._parts[0]}
        if isinstance(importance, Mapping):
            imp = np.full(layer.shape[0], np.nan)
            ls, ns = merged["layer"], merged["neuron"]
            for lay, vec in importance.items():
                sel = ls == int(lay)
                imp[sel] = np.asarray(vec, dtype=np.float64).ravel()[ns[sel]]
            importance = imp
        cols = finalize([merged], importance, alpha=self.alpha)
        return {k: cols[k] for k in TABLE_COLUMNS}
