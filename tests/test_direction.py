"""Direction, the effect gate, DESIGN's consistency, lexical exclusion and corrected
replication, against hand-computed references on synthetic paired groups (no model)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from neurolens.constants import EFFECT_GATE
from neurolens.numerics import ScoreAccumulator, score_chunk
from neurolens.numerics.scoring import finalize


def _paired(G, per, m, seed):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(G), 2 * per)
    y = np.tile(np.r_[np.ones(per), np.zeros(per)], G).astype(int)
    return rng.standard_normal((len(y), m)), y, g


def _d(x, y, g, j):
    return np.array([x[(g == k) & (y == 1), j].mean() - x[(g == k) & (y == 0), j].mean()
                     for k in np.unique(g)])


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_effect_consistency_direction_match_the_group_differences(backend):
    x, y, g = _paired(G=22, per=5, m=40, seed=1)
    x[y == 1, 3] += 1.0
    x[y == 1, 4] -= 1.0
    r = score_chunk(x.astype(np.float32), y, groups=g, backend=backend)
    for j in range(40):
        d = _d(x.astype(np.float32).astype(np.float64), y, g, j)
        assert r["effect"][j] == pytest.approx(d.mean() / d.std(ddof=1), rel=1e-6)
        assert r["consistency"][j] == pytest.approx(np.mean(d > 0))
        assert r["direction"][j] == (1 if d.mean() > 0 else -1)
    assert r["direction"][3] == 1 and r["direction"][4] == -1


def test_significant_means_concept_direction_and_effect_above_the_gate():
    x, y, g = _paired(G=22, per=5, m=400, seed=2)
    up, down = [5, 6, 7], [8, 9]
    x[np.ix_(y == 1, up)] += 1.5
    x[np.ix_(y == 1, down)] -= 1.5
    t = finalize([score_chunk(x, y, groups=g)])
    assert t["significant"][up].all() and not t["significant"][down].any()
    assert t["opposite"][down].all() and not t["opposite"][up].any()
    assert (t["rank"][down] == -1).all() and (t["rank"][up] > 0).all()
    want = (t["q_value"] < 0.05) & (t["direction"] == 1) & (t["effect"] >= EFFECT_GATE)
    assert np.array_equal(t["significant"], want)
    # the gate bites: a neuron with q < 0.05 but effect under the gate is not significant
    gated = (t["q_value"] < 0.05) & (t["direction"] == 1) & (t["effect"] < EFFECT_GATE)
    assert not t["significant"][gated].any()


def test_gate_rejects_a_word_present_in_a_third_of_the_groups():
    """A neuron that answers only a word found on the positive side of a third of the
    groups: many groups, so its q can pass, but its effect cannot reach the gate."""
    G = 300
    x, y, g = _paired(G=G, per=5, m=2, seed=3)
    has_word = (np.arange(G) % 3 == 0)[g] & (y == 1)
    x[has_word, 0] += 3.0
    t = finalize([score_chunk(x, y, groups=g)])
    assert t["q_value"][0] < 1e-6
    assert t["effect"][0] < np.sqrt((1 / 3) / (2 / 3)) + 0.05 < EFFECT_GATE
    assert not t["significant"][0]


def test_lexical_neurons_are_not_ranked_and_replication_is_bh_over_the_ranked():
    x, y, g = _paired(G=22, per=4, m=300, seed=4)
    xt, yt, gt = _paired(G=10, per=4, m=300, seed=5)
    planted = np.arange(0, 12)
    x[np.ix_(y == 1, planted)] += 1.5
    xt[np.ix_(yt == 1, planted[:6])] += 1.5              # half of them carry over
    lexical = np.zeros(300, bool)
    lexical[[0, 1]] = True                                # say the control lit these up
    acc = ScoreAccumulator()
    acc.add(0, x, y, groups=g, test=(xt, yt, gt))
    c = acc.finalize(lexical=lexical)
    assert c["significant"][planted].all()
    assert (c["rank"][[0, 1]] == -1).all() and c["lexical"][[0, 1]].all()
    ranked = np.flatnonzero(c["rank"] > 0)
    assert set(planted[2:]) <= set(ranked)
    # q_test is BH over the ranked neurons only, NaN elsewhere
    ref = stats.false_discovery_control(c["p_test"][ranked], method="bh")
    np.testing.assert_allclose(c["q_test"][ranked], ref, rtol=1e-9)
    assert np.isnan(np.delete(c["q_test"], ranked)).all()
    assert np.array_equal(c["replicated"], c["q_test"] < 0.05)
    assert c["replicated"][2:6].all() and not c["replicated"][6:12].any()
