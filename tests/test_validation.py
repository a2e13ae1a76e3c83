"""Calibrated validation: magnitude-matched controls, a uniform p under an exchangeable
null, and one verdict in which NaN and ±inf never validate, on every surface."""
from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest
from scipy import stats

from neurolens.constants import ALPHA, OFF_TARGET_FLOOR, SPECIFICITY_MIN
from neurolens.engine.causal.ablation import stage as ablate
from neurolens.engine.causal.ablation.controls import bands, group_of, random_controls
from neurolens.engine.causal.ablation.verdict import (empirical_p, sequential_p, specificity, stop_after,
                                                       stop_index, validated)


# -- controls ------------------------------------------------------------------------------
def test_bands_split_each_layer_by_magnitude_rank():
    rng = np.random.default_rng(0)
    mags = {0: rng.gamma(1.0, 1.0, 1536), 3: rng.gamma(1.0, 1.0, 256)}
    b = bands(mags, n_random=99)
    assert sorted(np.unique(b[0])) == [0, 1, 2, 3]          # quartiles where 4 bands hold >= 100
    assert sorted(np.unique(b[3])) == [0, 1]                # 256 // 100 = 2 bands
    for l, m in mags.items():
        lo = [m[b[l] == k].max() for k in range(b[l].max())]
        hi = [m[b[l] == k + 1].min() for k in range(b[l].max())]
        assert all(x <= y for x, y in zip(lo, hi))           # bands are ordered, not interleaved
        assert np.bincount(b[l]).min() >= 100


def test_controls_come_from_the_top_neurons_layer_and_band():
    rng = np.random.default_rng(1)
    band = bands({0: rng.gamma(1, 1, 800), 2: rng.gamma(1, 1, 800)}, n_random=49)
    top = [(0, int(np.argmax(band[0]))), (2, 5), (0, 17), (2, int(np.argmin(band[2])))]
    draws, singles = random_controls(top, band, 49, seed=3)
    assert len(draws) == 49
    for d in draws:
        assert [group_of(band, x) for x in d] == [group_of(band, x) for x in top]
        assert len(set(d)) == len(d) and not set(d) & set(top)
    assert set(singles) == {group_of(band, x) for x in top}
    for g, xs in singles.items():
        assert len(xs) == 49 and len(set(xs)) == 49 and all(group_of(band, x) == g for x in xs)
    assert random_controls(top, band, 49, seed=3) == (draws, singles)


# -- the verdict -----------------------------------------------------------------------------
def test_empirical_p_and_specificity():
    null = np.array([0.0, 0.1, 0.2, 0.3])
    assert empirical_p(0.25, null) == pytest.approx(2 / 5)
    assert empirical_p(0.3, null) == pytest.approx(2 / 5)      # a tie counts against the set
    assert empirical_p(9.0, null) == pytest.approx(1 / 5)
    assert empirical_p(9.0, np.array([0.0, np.nan])) == pytest.approx(2 / 3)
    assert np.isnan(empirical_p(np.nan, null)) and np.isnan(empirical_p(np.inf, null))
    assert specificity(0.4, 0.1) == pytest.approx(4.0)
    assert specificity(0.4, -0.2) == pytest.approx(0.4 / OFF_TARGET_FLOOR)   # gains count as the floor
    assert np.isnan(specificity(0.4, np.nan))


@pytest.mark.parametrize("q,spec", [(np.nan, 10.0), (0.001, np.nan), (np.inf, 10.0), (-np.inf, 10.0),
                                    (0.001, np.inf), (0.001, -np.inf), (np.nan, np.nan),
                                    (ALPHA, 10.0), (0.001, SPECIFICITY_MIN)])
def test_nan_inf_and_the_boundary_never_validate(q, spec):
    assert not validated(q, spec)
    assert validated(0.001, SPECIFICITY_MIN + 0.01)


def test_duckdb_and_polars_treat_nan_as_large():
    """Why no surface compares a number itself: NaN >= 3 is true in both engines."""
    assert duckdb.connect().execute("SELECT 'NaN'::DOUBLE >= 3").fetchall()[0][0] is True
    assert pl.DataFrame({"x": [float("nan")]}).select(pl.col("x") >= 3).item() is True


# -- calibration: p is uniform under an exchangeable null ----------------------------------------
def _null_ps(match_bands: bool, trials: int, n_random: int = 49, seed: int = 0,
             stop: int | None = None) -> tuple[list, list]:
    """Per trial: a 'top' set drawn like its controls (uniform from its groups), drops from
    a synthetic, heavy-tailed drop function that grows with magnitude; the stage's own rows
    give the p-values. With match_bands=False, the top set comes from the largest band and
    the controls from the whole layer (the unmatched design)."""
    rng = np.random.default_rng(seed)
    mags = {0: rng.gamma(0.7, 1.0, 600), 1: rng.gamma(0.7, 1.0, 600)}
    band = bands(mags, n_random)
    effect = {l: m * rng.standard_cauchy(m.size).__abs__() * 0.01 for l, m in mags.items()}

    def drop(s):
        return float(sum(effect[l][n] for l, n in s))

    groups = [(0, 3), (1, 3), (0, 3)]               # the largest band of each layer, top-heavy
    single, cum = [], []
    for _ in range(trials):
        top = []
        for l, b in groups:
            pool = np.setdiff1d(np.flatnonzero(band[l] == b), [n for ll, n in top if ll == l])
            top.append((l, int(rng.choice(pool))))
        ctrl_band = band if match_bands else {l: np.zeros(600, np.int64) for l in mags}
        draws, singles = random_controls(top, ctrl_band, n_random, int(rng.integers(1 << 30)))
        sets = ablate.distinct_sets(top, draws, singles, [1, 3])
        drops = {tuple(sorted(s)): (1.0, 1.0 - drop(s), drop(s), 0.0) for s in sets}
        rows = ablate.ablation_rows("zero", "target_prob", top, draws, singles, drops, 10, [1, 3],
                                    ctrl_band, stop=stop)
        single += [r["p_value"] for r in rows if r["mode"] == "single" and r["neuron"] == top[1][1]]
        cum += [r["p_value"] for r in rows if r["mode"] == "cumulative" and r["k"] == 3]
    return single, cum


def test_p_is_uniform_under_an_exchangeable_null():
    single, cum = _null_ps(match_bands=True, trials=250)
    jitter = np.random.default_rng(7)
    for ps in (single, cum):
        ps = np.asarray(ps)
        # p is uniform on {1/50, ..., 1}; minus U/50 it is uniform on (0, 1), which KS can test
        assert stats.kstest(ps - jitter.uniform(size=ps.size) / 50, "uniform").pvalue > 0.01
        assert (ps <= 0.05).mean() <= 0.09                      # about 5 % below 0.05, not more
    # the same top sets against layer-only controls: big neurons beat small ones, p is not uniform
    single_u, cum_u = _null_ps(match_bands=False, trials=60)
    assert stats.kstest(cum_u, "uniform").pvalue < 1e-6
    assert np.mean(cum_u) < 0.35                            # a uniform p averages 0.51


def test_q_is_bh_over_the_distinct_tested_sets():
    top = [(0, 1), (0, 2)]
    draws, singles = random_controls(top, lambda l: 200, 19, seed=0)
    sets = ablate.distinct_sets(top, draws, singles, [1, 2])
    drops = {tuple(sorted(s)): (1.0, 0.9, 0.0, 0.0) for s in sets}
    drops[((0, 1),)] = (1.0, 0.5, 0.5, 0.0)                 # beats every control, specific
    drops[((0, 1), (0, 2))] = (1.0, 0.5, 0.5, 0.5)          # beats every control, not specific
    rows = ablate.ablation_rows("zero", "target_prob", top, draws, singles, drops, 10, [1, 2])
    tested = {(r["mode"], r["k"], r["neuron"]): r for r in rows if r["mode"] != "random"}
    # three distinct tested sets (cumulative k = 1 is the top-1 single): p = 1/20, 1, 1/20
    assert tested[("single", 1, 1)]["p_value"] == pytest.approx(0.05)
    assert tested[("single", 1, 1)]["q_value"] == pytest.approx(0.075)
    assert tested[("cumulative", 1, 1)]["q_value"] == tested[("single", 1, 1)]["q_value"]
    assert not any(r["validated"] for r in rows)              # q 0.075 >= ALPHA: honest at 19 controls
    assert all(r["q_value"] is None and not r["validated"] for r in rows if r["mode"] == "random")


# -- the sequential test: fewer controls, the same verdicts ----------------------------------
def test_sequential_p_stops_at_the_h_th_control_that_reaches_the_drop():
    null = np.array([0.1, 0.5, 0.6, 0.2, 0.7, 0.9, 0.8])
    assert stop_index(0.55, null, 3) == 6 and sequential_p(0.55, null, 3) == pytest.approx(3 / 6)
    assert stop_index(0.95, null, 3) == 7 and sequential_p(0.95, null, 3) == pytest.approx(1 / 8)
    assert sequential_p(0.65, null, 3) == pytest.approx(3 / 7)   # the 3rd to reach it is the last
    assert sequential_p(0.55, null, None) == empirical_p(0.55, null)
    # a prefix decides a stopped test, not one that needs every control
    assert stop_index(0.55, null[:6], 3, n_controls=7) == 6
    assert stop_index(0.95, null[:4], 3, n_controls=7) is None
    assert stop_index(0.55, np.array([np.nan, 0.6, 0.1, 0.7]), 3) == 4   # NaN reaches the drop
    assert stop_index(np.nan, null, 3) == 0 and np.isnan(sequential_p(np.nan, null[:0], 3))
    # h: the fewest exceedances that put p above ALPHA whatever the rest would say
    for n in (19, 39, 49, 99, 100, 259):
        h = stop_after(n)
        assert h / n > ALPHA and (h - 1) / n <= ALPHA + 1e-12


def test_sequential_p_is_valid_under_an_exchangeable_null():
    n_random = 49
    single, cum = _null_ps(match_bands=True, trials=400, n_random=n_random, stop=stop_after(n_random))
    for ps in (np.asarray(single), np.asarray(cum)):
        # attainable levels: 2/50 (at most one control reaches the drop), 3/10 and 3/6 (stopped)
        for u in (2 / 50, 3 / 10, 3 / 6):
            sd = np.sqrt(u * (1 - u) / ps.size)
            assert abs((ps <= u + 1e-12).mean() - u) <= 3.5 * sd, u


def _effect_trial(rng, n_random: int):
    """Top sets with every kind of effect (none, modest, strong) and their controls' drops."""
    mags = {0: rng.gamma(0.7, 1.0, 400), 1: rng.gamma(0.7, 1.0, 400)}
    band = bands(mags, n_random)
    effect = {l: m * np.abs(rng.standard_cauchy(m.size)) * 0.01 for l, m in mags.items()}
    top = [(0, int(n)) for n in rng.choice(400, 3, replace=False)] + \
          [(1, int(n)) for n in rng.choice(400, 3, replace=False)]
    boost = {x: rng.choice([0.0, 0.02, 0.05, 0.2, 5.0]) for x in top}
    draws, singles = random_controls(top, band, n_random, int(rng.integers(1 << 30)))
    sizes = [1, 2, 5, 6]
    drops = {}
    for s in ablate.distinct_sets(top, draws, singles, sizes):
        d = float(sum(effect[l][n] + boost.get((l, n), 0.0) for l, n in s))
        drops[tuple(sorted(s))] = (1.0, 1.0 - d, d, 0.001)
    return top, draws, singles, drops, sizes, band


def test_sequential_verdicts_equal_every_controls_and_read_fewer():
    rng = np.random.default_rng(3)
    n_random = 99
    h = stop_after(n_random)
    read = full_read = 0
    validated_seen = 0
    for _ in range(60):
        top, draws, singles, drops, sizes, band = _effect_trial(rng, n_random)
        full = ablate.ablation_rows("zero", "target_prob", top, draws, singles, drops, 10, sizes, band)
        seq = ablate.ablation_rows("zero", "target_prob", top, draws, singles, drops, 10, sizes, band,
                                   stop=h)
        ft = [r for r in full if r["mode"] != "random"]
        st = [r for r in seq if r["mode"] != "random"]
        assert [(r["mode"], r["k"], r["neuron"]) for r in ft] == [(r["mode"], r["k"], r["neuron"]) for r in st]
        for f, s in zip(ft, st):
            assert f["validated"] == s["validated"]
            if f["q_value"] < ALPHA or s["q_value"] < ALPHA:
                assert f["q_value"] == s["q_value"]
            n = f["n_controls"]
            if round(f["p_value"] * (n + 1)) - 1 < h:           # fewer than h controls reached it
                assert s["p_value"] == f["p_value"] and s["n_controls"] == n
            else:                          # stopped at its h-th: p = h / L, L <= the controls read
                L = h / s["p_value"]
                assert L == pytest.approx(round(L)) and h <= round(L) <= s["n_controls"] <= n
                assert s["p_value"] > ALPHA
        validated_seen += sum(r["validated"] for r in ft)
        read += sum(r["mode"] == "random" for r in seq)
        full_read += sum(r["mode"] == "random" for r in full)
        # measuring in rounds, each null's next controls until it stops, reads what the rows need
        measured = {k: v for k, v in drops.items()
                    if k in {tuple(sorted(x)) for x in [[t] for t in top] + [top[:j] for j in sizes]}}
        queues = ablate.control_queues(top, draws, singles, sizes, band)
        ablate.measure_controls(lambda sets: measured.update({tuple(sorted(s)): drops[tuple(sorted(s))]
                                                              for s in sets}), queues, measured, h)
        again = ablate.ablation_rows("zero", "target_prob", top, draws, singles, measured, 10, sizes,
                                     band, stop=h)
        assert again == seq
    assert validated_seen > 20                 # the comparison covers sets that validate ...
    assert read < 0.9 * full_read              # ... and the sequential test reads fewer controls
