"""Numeric core of NeuroLens: per-neuron concept scores, no I/O.

Public API::

    score_chunk(acts, labels, *, groups=None, backend="auto") -> dict[str, np.ndarray]
    score_test(acts, labels, direction, *, groups=None) -> held-out replication columns
    finalize(per_layer_results, importance=None, *, alpha=0.05) -> dict[str, np.ndarray]
    ScoreAccumulator(*, backend="auto", alpha=0.05).add(layer, acts, labels, *, neuron_offset=0)
                                                    .finalize(importance=None)
    stats.bh_qvalues(p), stats.percentile_rank(x), stats.welch_p(t, df), stats.welch_t(...)

See docs/kernels.md for the formulas and edge-case conventions.
"""

from . import groups, peers, stats
from .groups import Design, make_design, min_attainable_p
from .scoring import (
    CHUNK_COLUMNS, TABLE_COLUMNS, TEST_COLUMNS, ScoreAccumulator, finalize, score_chunk, score_test,
)
from .stats import bh_qvalues, percentile_rank, welch_p, welch_t

__all__ = [
    "score_chunk", "score_test", "finalize", "ScoreAccumulator", "CHUNK_COLUMNS", "TEST_COLUMNS",
    "TABLE_COLUMNS", "Design", "make_design", "min_attainable_p",
    "bh_qvalues", "percentile_rank", "welch_p", "welch_t", "stats", "groups", "peers",
]
