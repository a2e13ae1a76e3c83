"""Numeric core of NeuroLens: per-neuron concept scores, no I/O.

Public API::

    score_chunk(acts, labels, *, backend="auto") -> dict[str, np.ndarray]
    finalize(per_layer_results, importance=None, *, alpha=0.05) -> dict[str, np.ndarray]
    ScoreAccumulator(*, backend="auto", alpha=0.05).add(layer, acts, labels, *, neuron_offset=0)
                                                    .finalize(importance=None)
    stats.bh_qvalues(p), stats.percentile_rank(x), stats.welch_p(t, df), stats.welch_t(...)

See docs/kernels.md for the formulas and edge-case conventions.
"""

from . import stats
from .scoring import CHUNK_COLUMNS, TABLE_COLUMNS, ScoreAccumulator, finalize, score_chunk
from .stats import bh_qvalues, percentile_rank, welch_p, welch_t

__all__ = [
    "score_chunk", "finalize", "ScoreAccumulator", "CHUNK_COLUMNS", "TABLE_COLUMNS",
    "bh_qvalues", "percentile_rank", "welch_p", "welch_t", "stats",
]
