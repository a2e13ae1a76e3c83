"""Scoring kernels against scipy / sklearn / plain numpy references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from neurolens.numerics import (
    CHUNK_COLUMNS, TABLE_COLUMNS, ScoreAccumulator, bh_qvalues, finalize, percentile_rank,
    score_chunk, welch_p,
)

BACKENDS = ["numba", "torch"]
TOL = 1e-6


def _data(n=400, m=60, seed=0, dtype=np.float16, pos_share=0.4, signal=()):
    """ReLU-like, rounded activations (lots of exact ties and zeros)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < pos_share).astype(np.int64)
    x = rng.normal(size=(n, m))
    for j in signal:
        x[y == 1, j] += 1.5
    x = np.maximum(x, 0.0)
    x[:, : m // 3] = np.round(x[:, : m // 3], 1)
    return x.astype(dtype), y


def _reference(x, y):
    """Straightforward per-neuron numpy/scipy/sklearn reference, all in float64."""
    x = np.asarray(x, dtype=np.float64)
    pos, neg = x[y == 1], x[y == 0]
    m = x.shape[1]
    ref = {k: np.empty(m) for k in ("auc", "p_value", "cohens_d", "consistency", "tpr_at_5fpr",
                                     "effect", "range_overlap", "mean_pos", "std_neg")}
    for j in range(m):
        a, b = pos[:, j], neg[:, j]
        ref["auc"][j] = roc_auc_score(y, x[:, j])
        ref["p_value"][j] = sps.ttest_ind(a, b, equal_var=False).pvalue
        s = np.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2))
        ref["cohens_d"][j] = (a.mean() - b.mean()) / s
        ref["tpr_at_5fpr"][j] = np.mean(a > np.percentile(b, 95))
        # no groups: every example is a cell, so consistency is P(+ cell > - cell) = the AUC
        ref["consistency"][j] = ref["auc"][j]
        ref["effect"][j] = (a.mean() - b.mean()) / np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
        lo, hi = a.mean() - 2 * a.std(ddof=1), a.mean() + 2 * a.std(ddof=1)
        ref["range_overlap"][j] = np.mean((b >= lo) & (b <= hi))
        ref["mean_pos"][j] = a.mean()
        ref["std_neg"][j] = b.std(ddof=1)
    return ref


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_matches_reference(backend, dtype):
    x, y = _data(dtype=dtype, signal=(1, 5, 30))
    got = score_chunk(x, y, backend=backend)
    assert set(got) == set(CHUNK_COLUMNS)
    ref = _reference(x, y)
    for k, v in ref.items():
        np.testing.assert_allclose(got[k], v, rtol=0, atol=TOL, err_msg=k)
    np.testing.assert_allclose(got["selectivity"], 2 * ref["auc"] - 1, atol=TOL)
    assert got["valid"].all()
    assert (got["n_pos"] == y.sum()).all() and (got["n_neg"] == (y == 0).sum()).all()


def test_qvalues_match_scipy():
    x, y = _data(m=200, signal=range(0, 200, 7))
    t = finalize([score_chunk(x, y)])
    np.testing.assert_allclose(t["q_value"], sps.false_discovery_control(t["p_value"], method="bh"), atol=TOL)
    p = np.random.default_rng(3).random(1000) ** 3
    p[:10] = p[10]  # ties
    np.testing.assert_allclose(bh_qvalues(p), sps.false_discovery_control(p, method="bh"), atol=1e-12)
    assert bh_qvalues(np.array([np.nan, 0.01]))[0] == 1.0


def test_welch_p_helper():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 5)), rng.normal(0.5, 2.0, size=(50, 5))
    r = sps.ttest_ind(a, b, equal_var=False)
    np.testing.assert_allclose(welch_p(r.statistic, r.df), r.pvalue, atol=1e-12)
    assert (welch_p(np.array([np.nan, 1.0]), np.array([3.0, np.nan])) == 1.0).all()


def test_percentile_rank():
    x = np.array([3.0, 1.0, 1.0, np.nan, 10.0])
    np.testing.assert_allclose(percentile_rank(x), [3 / 4, 1.5 / 4, 1.5 / 4, 0.0, 1.0])
    np.testing.assert_allclose(percentile_rank(np.arange(5.0))[::-1], sps.rankdata(-np.arange(5.0)) / 5)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_backends_agree(dtype):
    x, y = _data(n=300, m=50, seed=4, dtype=dtype, signal=(2, 3))
    x[:5, 7] = -0.0  # signed zeros tie with zeros
    a = score_chunk(x, y, backend="numba")
    b = score_chunk(x, y, backend="torch")
    for k in CHUNK_COLUMNS:
        np.testing.assert_allclose(np.asarray(a[k], float), np.asarray(b[k], float),
                                   rtol=0, atol=1e-9, equal_nan=True, err_msg=k)


def test_torch_input_and_auto_backend():
    torch = pytest.importorskip("torch")
    x, y = _data(n=120, m=10, seed=6)
    a = score_chunk(torch.from_numpy(x), y)  # CPU tensor -> numba
    b = score_chunk(x, torch.from_numpy(y).bool(), backend="torch")
    np.testing.assert_allclose(a["auc"], b["auc"], atol=1e-12)


def test_null_control_few_discoveries():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(600, 2000)).astype(np.float16)
    y = rng.permutation(np.r_[np.ones(300, int), np.zeros(300, int)])
    t = finalize([score_chunk(x, y)])
    assert np.mean(t["q_value"] < 0.05) <= 0.05
    assert np.mean(t["p_value"] < 0.05) <= 0.08  # p roughly uniform under the null


def test_planted_signal_ranks_top():
    planted = (11, 97, 150, 333)
    x, y = _data(n=600, m=400, seed=8, signal=planted)
    acc = ScoreAccumulator()
    acc.add(0, x[:, :200], y)
    acc.add(1, x[:, 200:], y)
    t = acc.finalize()
    top = {(int(l), int(n)) for l, n, r in zip(t["layer"], t["neuron"], t["rank"]) if 1 <= r <= 4}
    assert top == {(0, 11), (0, 97), (0, 150), (1, 133)}
    assert (t["rank"] > 0).sum() < 20


def test_edge_cases_do_not_crash_and_are_not_significant():
    x, y = _data(n=200, m=8, seed=9, dtype=np.float32, signal=range(8))
    x[:, 0] = 1.0                       # constant
    x[:, 1] = np.where(y == 1, 2.0, 1.0)  # constant within groups, different means
    x[3, 2] = np.nan
    x[4, 3] = np.inf
    for backend in BACKENDS:
        for dtype in (np.float16, np.float32):
            r = score_chunk(x.astype(dtype), y, backend=backend)
            assert r["p_value"][0] == 1.0 and r["auc"][0] == 0.5 and r["tpr_at_5fpr"][0] == 0.0
            # constant within each label, different values: a perfect neuron, p = 0 (not NaN)
            assert r["p_value"][1] == 0.0 and r["auc"][1] == 1.0
            for j in (2, 3):
                assert not r["valid"][j]
                assert r["p_value"][j] == 1.0 and r["auc"][j] == 0.5 and r["tpr_at_5fpr"][j] == 0.0
            assert r["valid"][[0, 1, 4, 5, 6, 7]].all()
            assert (r["p_value"][4:] < 1e-6).all()
            t = finalize([r])
            assert t["rank"][1] > 0 and (t["rank"][[0, 2, 3]] == -1).all() and (t["rank"][4:] > 0).all()
            assert np.isfinite(t["score"]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_pos", [0, 1, 2])
def test_tiny_groups(backend, n_pos):
    rng = np.random.default_rng(10)
    x = rng.normal(size=(30, 6)).astype(np.float16)
    y = np.zeros(30, int)
    y[:n_pos] = 1
    x[:n_pos] += 10
    r = score_chunk(x, y, backend=backend)
    t = finalize([r])
    if n_pos < 2:
        assert (r["p_value"] == 1.0).all() and (t["rank"] == -1).all()
    if n_pos == 0:
        assert (r["auc"] == 0.5).all() and (r["tpr_at_5fpr"] == 0).all()
    else:
        assert (r["auc"] == 1.0).all()
    r = score_chunk(x, 1 - y, backend=backend)  # the mirror: tiny negative group
    assert np.isfinite(r["p_value"]).all()


def test_chunked_accumulation_equals_one_call():
    x, y = _data(n=500, m=300, seed=11, signal=(4, 120, 299))
    imp = np.random.default_rng(12).random(300)
    imp[5] = np.nan
    whole = ScoreAccumulator(backend="numba")
    whole.add(0, x, y)
    a = whole.finalize(importance=imp)
    acc = ScoreAccumulator(backend="numba")
    # three "layers" of 100, added out of order and split into uneven column chunks
    for layer, lo, hi in [(2, 250, 300), (0, 0, 37), (1, 100, 200), (0, 37, 100), (2, 200, 250)]:
        acc.add(layer, x[:, lo:hi], y, neuron_offset=lo - 100 * layer)
    b = acc.finalize(importance={0: imp[:100], 1: imp[100:200], 2: imp[200:]})
    assert list(b) == list(TABLE_COLUMNS)
    np.testing.assert_array_equal(b["layer"], np.repeat([0, 1, 2], 100))
    np.testing.assert_array_equal(b["neuron"], np.tile(np.arange(100), 3))
    for k in TABLE_COLUMNS:
        if k not in ("layer", "neuron"):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert a["importance_pct"][5] == 0.0
    # score with importance is the cube root of the three factors
    s = np.cbrt(np.maximum(a["selectivity"], 0) * a["consistency"] * a["importance_pct"])
    np.testing.assert_allclose(a["score"], s)
    # ranks: 1..k over the significant (q < 0.05, concept direction, effect gate) by score
    sig = a["significant"]
    assert np.array_equal(sig, (a["q_value"] < 0.05) & (a["direction"] == 1) & (a["effect"] >= 0.8))
    assert sorted(a["rank"][sig]) == list(range(1, sig.sum() + 1)) and (a["rank"][~sig] == -1).all()
    ranked = np.argsort(np.where(sig, a["rank"], 10**9))[: sig.sum()]
    assert np.all(np.diff(a["score"][ranked]) <= 0)


def test_score_without_importance_and_rank_ties():
    x, y = _data(n=300, m=40, seed=13, signal=(0, 1))
    x[:, 1] = x[:, 0]  # identical neurons: tie broken by neuron order
    t = finalize([score_chunk(x, y)])
    np.testing.assert_allclose(t["score"], np.sqrt(np.maximum(t["selectivity"], 0) * t["consistency"]))
    assert np.isnan(t["importance_pct"]).all()
    assert t["rank"][0] == 1 and t["rank"][1] == 2


def test_accumulator_rejects_bad_input():
    x, y = _data(n=50, m=4)
    acc = ScoreAccumulator()
    acc.add(0, x, y)
    with pytest.raises(ValueError):
        acc.add(1, x, 1 - y)
    acc.add(0, x[:, :2], y, neuron_offset=2)
    with pytest.raises(ValueError):
        acc.finalize()
    with pytest.raises(ValueError):
        score_chunk(x, np.full(50, 2))


def test_top_columns_equal_a_full_sort_of_every_column():
    """The elastic-net probe's columns: the k best by probeless score over every chunk, ties
    by arrival, whatever the chunking, from numpy or torch chunks; checked against sorting
    all columns at once (many ties, -inf scores, chunks smaller and larger than k)."""
    import torch

    from neurolens.numerics.peers import TopColumns

    rng = np.random.default_rng(3)
    for _ in range(200):
        k, n = int(rng.integers(1, 30)), int(rng.integers(1, 5))
        top, scores, ids, cols = TopColumns(k), [], [], []
        for chunk in range(int(rng.integers(1, 7))):
            m = int(rng.integers(1, 40))
            sc = rng.integers(0, 5, m).astype(float)
            sc[rng.random(m) < 0.1] = -np.inf
            rows = chunk * (1 << 32) + np.arange(m, dtype=np.int64)
            x = rng.standard_normal((n, m)).astype(np.float16)
            top.add(sc, rows, torch.from_numpy(x) if chunk % 2 else x)
            scores.append(sc), ids.append(rows), cols.append(x.astype(np.float32))
        s, r, c = np.concatenate(scores), np.concatenate(ids), np.concatenate(cols, axis=1)
        best = np.lexsort((r, -s))[:k]
        assert np.array_equal(top.rows, r[best]) and np.array_equal(top.score, s[best])
        assert np.array_equal(top.cols, c[:, best])
