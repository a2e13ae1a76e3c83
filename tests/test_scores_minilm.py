"""Scores of a real pretrained model (MiniLM) equal float64 references from sklearn/scipy
(the group-level test of DESIGN "Scores": paired t over the groups' d_g), and a
label-shuffled null control stays at the nominal false-discovery rate."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from neurolens.store import Store, read_layer, read_table

LAYERS = [0, 3, 5]


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory):
    from neurolens.pipeline import RunConfig, run

    out = tmp_path_factory.mktemp("minilm")
    res = run(RunConfig(model="minilm", concept="negation", layers=LAYERS, out=str(out), report=False))
    return out, res


def _train(res, store, layer, with_groups=False):
    from neurolens.probes import load_concept

    ps = load_concept("negation")
    ids, acts = read_layer(store, "minilm", "negation", layer)
    split = {e.example_id: (e.split, e.label, e.group) for e in ps.examples}
    keep = np.array([split[i][0] == "train" for i in ids])
    y = np.array([split[i][1] for i in ids])[keep]
    if with_groups:
        g = np.array([split[i][2] for i in ids])[keep]
        return acts[keep], y, g
    return acts[keep].astype(np.float64), y


def _paired_reference(x, y, g):
    """float64 scipy: one-sample t over d_g = mean(a|g,+) - mean(a|g,-), two-sided."""
    x = x.astype(np.float64)
    gs = sorted(set(g))
    d = np.stack([x[(g == k) & (y == 1)].mean(0) - x[(g == k) & (y == 0)].mean(0) for k in gs])
    return stats.ttest_1samp(d, 0.0, axis=0).pvalue, len(gs)


def test_scores_equal_references(minilm_run):
    out, res = minilm_run
    store = Store(out / "store")
    sc = read_table(store, "scores", {"model": "minilm", "concept": "negation"}).to_pydict()
    layer, neuron = np.array(sc["layer"]), np.array(sc["neuron"])
    assert sorted(set(layer.tolist())) == LAYERS and len(layer) == 3 * 1536
    rng = np.random.default_rng(0)
    p_ref = np.empty(len(layer))
    for l in LAYERS:
        x, y = _train(res, store, l)
        rows = np.flatnonzero(layer == l)
        for j in rng.choice(1536, 40, replace=False):
            r = rows[neuron[rows] == j][0]
            assert sc["auc"][r] == pytest.approx(roc_auc_score(y, x[:, j]), abs=1e-6)
        x16, y16, g = _train(res, store, l, with_groups=True)
        ref, n_groups = _paired_reference(x16, y16, g)
        p_ref[rows[np.argsort(neuron[rows])]] = ref
        assert set(np.array(sc["n_units"])[rows]) == {n_groups}
    np.testing.assert_allclose(np.array(sc["p_value"]), p_ref, atol=1e-6)
    q_ref = stats.false_discovery_control(p_ref, method="bh")
    np.testing.assert_allclose(np.array(sc["q_value"]), q_ref, atol=1e-6)
    # importance came from the backward pass and ranks are consistent with the score
    assert np.isfinite(np.array(sc["importance"], dtype=float)).all()
    ranked = [(rk, s) for rk, s in zip(sc["rank"], sc["score"]) if rk is not None]
    assert ranked and [s for _, s in sorted(ranked)] == sorted((s for _, s in ranked), reverse=True)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_paired_design_both_backends_equal_scipy(minilm_run, backend):
    """Rescoring the stored activations with each kernel backend gives the scipy p and q."""
    from neurolens.score import example_arrays
    from neurolens.numerics import ScoreAccumulator
    from neurolens.probes import load_concept

    out, res = minilm_run
    store = Store(out / "store")
    ex_ids, train, labels, grp = example_arrays(load_concept("negation"))
    acc = ScoreAccumulator(backend=backend)
    refs = []
    for l in LAYERS:
        ids, acts = read_layer(store, "minilm", "negation", l)
        pos = np.searchsorted(ex_ids, ids)
        keep = train[pos]
        acc.add(l, acts[keep], labels[pos][keep], groups=grp[pos][keep])
        refs.append(_paired_reference(acts[keep], labels[pos][keep], grp[pos][keep])[0])
    cols = acc.finalize()
    p_ref = np.concatenate(refs)
    assert acc.design.paired
    np.testing.assert_allclose(cols["p_value"], p_ref, atol=1e-6)
    np.testing.assert_allclose(cols["q_value"], stats.false_discovery_control(p_ref, method="bh"), atol=1e-6)


def test_shuffled_labels_null_control(minilm_run):
    from neurolens.numerics import ScoreAccumulator

    out, res = minilm_run
    store = Store(out / "store")
    acc = ScoreAccumulator()
    rng = np.random.default_rng(1)
    perm = None
    for l in LAYERS:
        x, y = _train(res, store, l)
        perm = rng.permutation(len(y)) if perm is None else perm
        acc.add(l, x.astype(np.float16), y[perm])
    cols = acc.finalize()
    assert (cols["q_value"] < 0.05).mean() <= 0.05


def test_query_one_row_per_layer(minilm_run, capsys):
    from neurolens.cli import main

    out, _ = minilm_run
    code = main(["query", "select layer, count(*) as n from activations group by layer order by layer",
                 "--format", "json", "--out", str(out)])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["layer"] for r in rows] == LAYERS
