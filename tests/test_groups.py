"""Group-level kernels on synthetic data: designs, the perfect-neuron bound, held-out
replication and the peer rankings (fast, no model)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from neurolens.numerics import ScoreAccumulator, make_design, min_attainable_p, score_chunk, score_test

BACKENDS = ["numba", "torch"]


def _paired(G=10, per=4, m=30, seed=0):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(G), 2 * per)
    y = np.tile(np.r_[np.ones(per), np.zeros(per)], G).astype(int)
    x = rng.standard_normal((len(y), m))
    return x, y, g


def test_designs():
    x, y, g = _paired()
    d = make_design(y, g)
    assert d.paired and d.n_units == 10
    d = make_design(y, None)                        # no groups: every example a unit
    assert not d.paired and d.n_units == len(y)
    g2 = g.copy()
    g2[:3] = -1                                     # three ungrouped examples: cells of their own
    d = make_design(y, g2)
    assert not d.paired and d.n_units == 2 * 10 + 3  # group 0 keeps both its cells
    assert min_attainable_p(make_design(y, g)) == pytest.approx(2.0 ** -9)
    one = make_design(np.r_[np.ones(5), np.zeros(7)].astype(int), np.arange(12))
    assert min_attainable_p(one) == pytest.approx(2 / math.comb(12, 5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_group_effect_beats_example_noise(backend):
    """A neuron that moves whole groups, not the label, is significant by examples only."""
    rng = np.random.default_rng(3)
    G, per = 12, 100
    g = np.repeat(np.arange(G), per)
    y = (g % 2).astype(int)                          # one label per group: cell design
    x = rng.standard_normal((len(y), 2)) * 0.1
    # group offsets: the + groups average 1 higher by chance, with a spread of about 2
    off = np.empty(G)
    off[1::2] = [3, -1, 2, -2, 4, 0]
    off[0::2] = [0.5, -2.5, 1.5, -1.5, 2.5, -0.5]
    x[:, 0] += off[g]
    by_example = score_chunk(x, y, backend=backend)["p_value"][0]
    by_group = score_chunk(x, y, groups=g, backend=backend)
    cm = np.array([x[g == k, 0].mean() for k in range(G)])
    ref = stats.ttest_ind(cm[1::2], cm[0::2], equal_var=False).pvalue
    assert by_group["p_value"][0] == pytest.approx(ref, abs=1e-9)
    assert by_example < 1e-6 and by_group["p_value"][0] > 0.05
    assert by_group["n_units"][0] == G


@pytest.mark.parametrize("backend", BACKENDS)
def test_held_out_replication_is_one_sided(backend):
    x, y, g = _paired(G=8, per=5, m=3, seed=4)
    x[y == 1, 0] += 2.0                              # replicates
    x[y == 1, 1] -= 2.0                              # also replicates, in the negative direction
    direction = np.array([1.0, 1.0, 1.0])            # but train said "up" for every neuron
    r = score_test(x, y, direction, groups=g, backend=backend)
    assert r["p_test"][0] < 1e-4
    assert r["p_test"][1] > 0.99
    d = np.array([x[(g == k) & (y == 1), 0].mean() - x[(g == k) & (y == 0), 0].mean() for k in range(8)])
    assert r["p_test"][0] == pytest.approx(stats.ttest_1samp(d, 0, alternative="greater").pvalue, abs=1e-9)


def test_accumulator_replication_and_peer_ranks():
    x, y, g = _paired(G=16, per=4, m=200, seed=5)
    xt, yt, gt = _paired(G=6, per=4, m=200, seed=6)
    planted = [7, 50, 120]
    x[np.ix_(y == 1, planted)] += 1.5
    xt[np.ix_(yt == 1, planted)] += 1.5
    decoy = 90                                       # train-only effect: must not replicate
    x[y == 1, decoy] += 1.5
    acc = ScoreAccumulator(probe_k=50)
    acc.add(0, x[:, :100], y, groups=g, test=(xt[:, :100], yt, gt))
    acc.add(0, x[:, 100:], y, groups=g, neuron_offset=100, test=(xt[:, 100:], yt, gt))
    c = acc.finalize()
    assert c["replicated"][planted].all() and not c["replicated"][decoy]
    assert c["replicated"].sum() <= len(planted) + 10          # ~5 % one-sided false replications
    diff = np.abs(x[y == 1].mean(0) - x[y == 0].mean(0))
    assert np.array_equal(np.argsort(c["rank_probeless"]), np.argsort(-diff, kind="stable"))
    assert set(np.flatnonzero((c["rank_probe"] >= 1) & (c["rank_probe"] <= 4))) >= set(planted)
    assert (c["rank_probe"] > 0).sum() == 50 and sorted(c["rank_probe"][c["rank_probe"] > 0]) == list(range(1, 51))
    assert set(np.flatnonzero((c["rank"] >= 1) & (c["rank"] <= 4))) == set(planted) | {decoy}


@pytest.mark.parametrize("backend", BACKENDS)
def test_null_groups_few_discoveries(backend):
    rng = np.random.default_rng(8)
    G, per = 30, 10
    g = np.repeat(np.arange(G), per)
    y = (rng.permutation(G) < 15).astype(int)[g]     # whole groups on each side
    x = (rng.standard_normal((len(y), 400)) + rng.standard_normal((G, 400))[g] * 1.5).astype(np.float16)
    acc = ScoreAccumulator(backend=backend)
    acc.add(0, x, y, groups=g)
    assert (acc.finalize()["q_value"] < 0.05).mean() <= 0.01
    naive = ScoreAccumulator(backend=backend)
    naive.add(0, x, y)                                # examples as units: many false findings
    assert (naive.finalize()["q_value"] < 0.05).mean() > 0.05


@pytest.mark.parametrize("case", ["correlated", "separable", "constant"])
def test_elastic_net_equals_sklearn(case):
    """The probe's weights are the optimum of scikit-learn's own elastic-net objective:
    equal to its saga run to a tight tolerance, in float64."""
    from sklearn.linear_model import LogisticRegression

    from neurolens.numerics.peers import C, L1_RATIO, elastic_net_weights

    rng = np.random.default_rng(3)
    n, k = 240, 60
    x = rng.standard_normal((n, k)) + 0.8 * rng.standard_normal((n, 1))   # shared factor
    y = (x[:, :4] @ [1.0, -0.7, 0.5, 0.3] + rng.standard_normal(n) > 0).astype(int)
    if case == "separable":
        x[:, 10] = np.where(y == 1, 3.0, -3.0) + 0.1 * rng.standard_normal(n)
    if case == "constant":
        x[:, 5] = 2.5                                 # no spread: weight 0, not NaN
    w = elastic_net_weights(x.astype(np.float32), y)
    xs = x.astype(np.float32).astype(np.float64)
    sd = xs.std(0)
    z = np.where(sd > 0, (xs - xs.mean(0)) / np.where(sd > 0, sd, 1), 0.0)
    ref = LogisticRegression(l1_ratio=L1_RATIO, C=C, solver="saga", tol=1e-10, max_iter=100_000,
                             random_state=0).fit(z, y)
    ref_w = np.abs(ref.coef_.ravel())
    assert np.isfinite(w).all() and (w > 0).sum() == (ref_w > 1e-9).sum()
    np.testing.assert_allclose(w, ref_w, atol=2e-5)
    assert set(np.argsort(-w)[:3]) == set(np.argsort(-ref_w)[:3])
    if case == "separable":
        assert np.argmax(w) == 10
    if case == "constant":
        assert w[5] == 0.0


def test_elastic_net_degenerate():
    from neurolens.numerics.peers import elastic_net_weights

    x = np.random.default_rng(0).standard_normal((20, 4))
    assert (elastic_net_weights(x, np.ones(20, int)) == 0).all()          # one class only
    assert elastic_net_weights(x[:, :0], np.r_[np.ones(10), np.zeros(10)]).shape == (0,)
