"""Scores of a real pretrained model (MiniLM) equal float64 references from sklearn/scipy,
and a label-shuffled null control stays at the nominal false-discovery rate."""
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


def _train(res, store, layer):
    from neurolens.probes import load_concept

    ps = load_concept("negation")
    ids, acts = read_layer(store, "minilm", "negation", layer)
    split = {e.example_id: (e.split, e.label) for e in ps.examples}
    keep = np.array([split[i][0] == "train" for i in ids])
    y = np.array([split[i][1] for i in ids])[keep]
    return acts[keep].astype(np.float64), y


def test_scores_equal_references(minilm_run):
    out, res = minilm_run
    store = Store(out / "store")
    sc = read_table(store, "scores", {"model": "minilm", "concept": "negation"}).to_pydict()
    layer, neuron = np.array(sc["layer"]), np.array(sc["neuron"])
    assert sorted(set(layer.tolist())) == LAYERS and len(layer) == 3 * 1536
    rng = np.random.default_rng(0)
    for l in LAYERS:
        x, y = _train(res, store, l)
        rows = np.flatnonzero(layer == l)
        for j in rng.choice(1536, 40, replace=False):
            r = rows[neuron[rows] == j][0]
            assert sc["auc"][r] == pytest.approx(roc_auc_score(y, x[:, j]), abs=1e-6)
            ref = stats.ttest_ind(x[y == 1, j], x[y == 0, j], equal_var=False).pvalue
            assert sc["p_value"][r] == pytest.approx(ref, abs=1e-6)
    q_ref = stats.false_discovery_control(np.array(sc["p_value"]), method="bh")
    np.testing.assert_allclose(np.array(sc["q_value"]), q_ref, atol=1e-6)
    # importance came from the backward pass and ranks are consistent with the score
    assert np.isfinite(np.array(sc["importance"], dtype=float)).all()
    ranked = [(rk, s) for rk, s in zip(sc["rank"], sc["score"]) if rk is not None]
    assert ranked and [s for _, s in sorted(ranked)] == sorted((s for _, s in ranked), reverse=True)


def test_shuffled_labels_null_control(minilm_run):
    from neurolens.kernels import ScoreAccumulator

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
