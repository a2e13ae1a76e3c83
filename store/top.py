"""The one definition of "the top neurons" of a model × concept, over its scores table.

Ranked neurons (rank is set only for q < alpha) come first, by rank; ties keep row order
(layer, neuron). With `fill`, the unranked rest follow by score, so a caller that needs
exactly k neurons (ablation) gets the next best when fewer than k are significant.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from .layout import Store
from .read import read_table


def top_order(scores: pa.Table, k: int | None = None, *, fill: bool = False) -> np.ndarray:
    """Row indices of the best `k` rows of a scores table (all ranked rows when k is None)."""
    rank = scores.column("rank").to_numpy(zero_copy_only=False).astype(float)
    if fill:
        score = np.nan_to_num(scores.column("score").to_numpy(zero_copy_only=False).astype(float),
                              nan=-np.inf)
        order = np.lexsort((-score, np.where(np.isnan(rank), np.inf, rank)))
    else:
        ok = np.flatnonzero(~np.isnan(rank))
        order = ok[np.argsort(rank[ok], kind="stable")]
    return order if k is None else order[:k]


def ranked(scores: pa.Table, k: int | None = None, *, fill: bool = False) -> pa.Table:
    """The best `k` rows of a scores table, best first (see `top_order`)."""
    return scores.take(pa.array(top_order(scores, k, fill=fill), pa.int64()))


def top_neurons(store: Store, model: str, concept: str, k: int | None = None, *, fill: bool = False,
                columns: Sequence[str] | None = None) -> pa.Table:
    """The best `k` neurons of `model` × `concept` from the store, best first."""
    t = ranked(read_table(store, "scores", {"model": model, "concept": concept}), k, fill=fill)
    return t.select(list(columns)) if columns else t


__all__ = ["ranked", "top_neurons", "top_order"]
