"""Labels, families and explanation scores: checked against a planted ground-truth model."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from neurolens.engine.labels import stage as label
from neurolens.probes.types import Example, ProbeSet
from neurolens.store import Store, read_table


def _secondary_probes(pm) -> ProbeSet:
    """The planted polysemantic neuron's second concept as minimal pairs: the builder's
    secondary sentences, each against the same sentence with an ordinary person."""
    from neurolens.engine.planted import text as pt

    words, neutral = pm.meta["secondary_tokens"], pt.NEUTRAL
    ex: list[Example] = []
    for gi, w in enumerate(words):
        split = "test" if gi % 3 == 0 else "train"
        for ti, tpl in enumerate(pt.TEMPLATES):
            # each group its own ordinary people (4 of them), so no negative word is shared by
            # the groups: a word on one side of every group would make the probe a word contrast
            for lab, word in ((1, w), (0, neutral[(4 * gi + ti % 4) % len(neutral)])):
                ex.append(Example(example_id=len(ex), label=lab, group=w, split=split,
                                  text=tpl.format(w=word), pair_id=len(ex) // 2))
    return ProbeSet(pm.secondary_concept, "text", ex, source="planted-secondary")


@pytest.fixture(scope="module")
def planted_run(planted_factory, tmp_path_factory):
    """A planted GPT-2 through the pipeline for its concept and its secondary concept."""
    from neurolens.engine.models import registry
    from neurolens.pipeline import RunConfig, run

    pm = planted_factory("gpt2")
    out = tmp_path_factory.mktemp("labels")
    adapter = registry.load(str(pm.path))
    results = [run(RunConfig(model=str(pm.path), concept=ps.concept, out=str(out), report=False,
                             batch_size=64), adapter=adapter, probes=ps)
               for ps in (pm.probes, _secondary_probes(pm))]
    store = Store(out / "store")
    labels = pl.from_arrow(read_table(store, "labels", {"model": adapter.name}))
    return pm, adapter, store, labels, results


def _row(labels: pl.DataFrame, ln: tuple[int, int]) -> dict:
    got = labels.filter((pl.col("layer") == ln[0]) & (pl.col("neuron") == ln[1]))
    assert got.height == 1, f"no label for L{ln[0]}.N{ln[1]}"
    return got.row(0, named=True)


def test_planted_neurons_are_labelled_with_their_tokens(planted_run):
    pm, _, _, labels, _ = planted_run
    royal = set(pm.meta["concept_tokens"])
    for ln in pm.planted:
        r = _row(labels, ln)
        assert r["concepts"][0] == pm.concept
        assert r["label"].startswith(f"{pm.concept} (S=")
        named = set(r["top_tokens"]) & royal
        assert len(named) >= 2, r
        assert any(f" {w}" in r["label"] for w in named)
        assert not r["polysemantic"]
        assert r["family"].split("+")[0] == pm.concept


def test_polysemantic_distractor_is_flagged(planted_run):
    pm, _, _, labels, _ = planted_run
    r = _row(labels, pm.polysemantic)
    assert set(r["concepts"]) >= {pm.concept, pm.secondary_concept}
    assert r["polysemantic"]
    assert " + " in r["label"]
    toks = set(r["top_tokens"])
    assert toks & set(pm.meta["concept_tokens"]) and toks & set(pm.meta["secondary_tokens"])
    # the surface neuron fires on both sides of every pair: not selective, no label
    assert labels.filter((pl.col("layer") == pm.surface[0]) & (pl.col("neuron") == pm.surface[1])).height == 0


def test_explanation_scores_favour_planted_neurons(planted_run):
    pm, adapter, store, labels, _ = planted_run
    keys = set(pm.planted)
    is_planted = pl.Series([(l, n) in keys for l, n in zip(labels["layer"], labels["neuron"])])
    planted = labels.filter(is_planted)["explanation_score"].to_numpy()
    assert planted.min() > 0.7
    assert np.all(labels["explanation_score"].drop_nans().to_numpy() <= 1.0)
    # significant neurons that are neither planted nor the distractor score lower
    others = labels.filter(~is_planted & pl.col("polysemantic").not_())["explanation_score"]
    others = others.drop_nans().to_numpy()
    if others.size:
        assert planted.mean() > np.median(others)
    # and the planted label, given to 40 random neurons of the same layers, explains them
    # far worse than it explains the planted neurons themselves
    concepts = label.model_concepts(store, adapter.name)
    rng = np.random.default_rng(0)
    lay = np.array([l for l, _ in pm.planted])
    rand = rng.integers(0, adapter.n_neurons(int(lay[0])), size=40)
    rl = np.r_[lay, rng.choice(lay, size=40)]
    rn = np.r_[[n for _, n in pm.planted], rand]
    sel = np.zeros((rl.size, len(concepts)))
    sel[:, concepts.index(pm.concept)] = 1.0
    toks = _row(labels, pm.planted[0])["top_tokens"]
    ev = label.Evidence(rl, rn, concepts, sel, sel > 0, [toks] * rl.size, np.arange(rl.size))
    r = label.explanation_scores(store, adapter.name, ev)
    assert r[:len(lay)].min() > 0.7
    control = np.nan_to_num(r[len(lay):], nan=0.0)
    assert planted.min() > np.quantile(control, 0.9) and planted.mean() > control.mean() + 0.3


def test_top_examples_have_token_activations(planted_run):
    pm, adapter, store, _, results = planted_run
    top = pl.from_arrow(read_table(store, "top_examples", {"model": adapter.name, "concept": pm.concept}))
    assert top.height > 0
    n_ranked = results[0].top.num_rows
    assert top.select("layer", "neuron").unique().height >= n_ranked
    assert (top.group_by("layer", "neuron").len()["len"] == label.TOP_EXAMPLES).all()
    assert (top["tokens"].list.len() == top["token_acts"].list.len()).all()
    # the activation is the stored pooled value, and for a planted neuron the royalty word
    # is among the tokens of every top example
    l, n = pm.planted[0]
    mine = top.filter((pl.col("layer") == l) & (pl.col("neuron") == n))
    assert mine["activation"].is_sorted(descending=True) or mine.height == mine["activation"].n_unique()
    royal = set(pm.meta["concept_tokens"])
    assert all(set(t) & royal for t in mine["tokens"].to_list())


def test_families_and_skip(planted_run):
    pm, adapter, store, labels, _ = planted_run
    assert labels["family"].null_count() == 0
    assert set(labels["family"].unique()) <= {pm.concept, pm.secondary_concept,
                                              f"{pm.concept}+{pm.secondary_concept}",
                                              f"{pm.secondary_concept}+{pm.concept}"}
    # every significant neuron of the model has a row; the partition is reused when nothing changed
    before = store.marker("labels", {"model": adapter.name})
    again = label.label_model(store, adapter.name, run_id="again")
    assert store.marker("labels", {"model": adapter.name}) == before
    assert again.num_rows == labels.height


def test_family_clustering_is_named_by_dominant_concepts():
    rng = np.random.default_rng(1)
    concepts = ["gender", "negation", "royalty"]
    sel = np.zeros((30, 3))
    sel[:10, 2] = 0.8 + 0.1 * rng.random(10)                       # royalty
    sel[10:20, [0, 2]] = 0.6 + 0.2 * rng.random((10, 2))            # royalty+gender
    sel[20:, 1] = 0.7 + 0.2 * rng.random(10)                       # negation
    ev = label.Evidence(np.zeros(30, np.int64), np.arange(30), concepts, sel, sel > 0,
                        [[] for _ in range(30)], np.zeros(0, np.int64))
    members = np.r_[0:8, 10:18, 20:28]                             # the others join by profile
    fam = label.families(ev, None, members)
    assert set(fam[:10]) == {"royalty"}
    assert set(fam[10:20]) <= {"royalty+gender", "gender+royalty"}
    assert set(fam[20:]) == {"negation"}


def test_simulation_score_is_a_correlation():
    rng = np.random.default_rng(2)
    e, n = 400, 3
    ft = rng.random((e, n)) < 0.3
    fc = rng.random((e, n)) < 0.5
    y = np.stack([2.0 * ft[:, 0] + rng.normal(0, 0.1, e),       # explained by its tokens
                  rng.normal(0, 1, e),                           # by nothing
                  -1.0 * fc[:, 2] + rng.normal(0, 0.1, e)], 1)   # anti-correlated: weight clipped
    test = rng.random(e) < 0.4
    sim = label.Simulation(n)
    sim.add(ft, fc, y, test, np.ones(n, bool))
    r = sim.scores()
    want = np.corrcoef(ft[test, 0], y[test, 0])[0, 1]
    assert abs(r[0] - want) < 0.02
    assert abs(r[1]) < 0.2
    assert r[2] == 0.0


def test_label_tokens_are_words(tmp_path):
    """Peaks on punctuation or special tokens never become label tokens; word pieces and
    byte-level markers are normalised."""
    import pyarrow as pa

    from neurolens.store.schema import TOP_EXAMPLES

    store = Store(tmp_path / "store")
    rows = [  # (example, tokens, activations): neuron 0 peaks on ',' '.' [SEP] and on words
        (0, ["[CLS]", "the", "king", ",", "[SEP]"], [0.0, 0.1, 0.95, 1.0, 1.2]),
        (1, ["[CLS]", "a", "queen", ".", "[SEP]"], [0.0, 0.1, 1.0, 0.95, 0.2]),
        (2, ["<s>", "\u0120King", "!", "</s>"], [0.0, 0.92, 1.0, 0.1]),
        (3, ["[CLS]", "play", "##ed", "[SEP]"], [0.0, 0.2, 1.0, 0.1]),
    ]
    te = pa.Table.from_pydict({
        "layer": [0] * len(rows), "neuron": [0] * len(rows), "example_id": [r[0] for r in rows],
        "activation": [1.0] * len(rows), "tokens": [r[1] for r in rows],
        "token_acts": [r[2] for r in rows], "run_id": ["r"] * len(rows)}, schema=TOP_EXAMPLES)
    store.write_partition("top_examples", {"model": "m", "concept": "royalty"}, te, key="r", run_id="r")
    got = label.top_tokens(store, "m", n_tokens=10)
    toks = got.row(0, named=True)["top_tokens"]
    assert toks[0] == "king"                       # two examples peak on it (one as 'ĠKing')
    assert set(toks) == {"king", "queen", "##ed"}


def test_a_lexical_control_is_not_a_concept_of_the_labels(tmp_path):
    """A neuron a word swap lights up (`<concept>+control`) gets no concept from it."""
    from report_fixtures import ModelSpec, build_store

    from neurolens.engine.labels.evidence import gather_evidence, model_concepts

    build_store(tmp_path / "store", [ModelSpec("gpt2", 2, 32, concepts=["royalty", "royalty+control"])],
                n_pos=12, n_neg=12)
    store = Store(tmp_path / "store")
    assert model_concepts(store, "gpt2") == ["royalty"]
    ev = gather_evidence(store, "gpt2", ["royalty", "royalty+control"])
    assert ev is not None and ev.concepts == ["royalty"]


def test_a_significant_neuron_with_negative_selectivity_gets_no_label_from_that_concept(tmp_path):
    """`significant` takes its direction from the cells' test and the selectivity from the
    examples; near 0 they can disagree (seen on a real MiniLM run). Such a row is not
    evidence for the concept, and labelling the model still works."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from report_fixtures import ModelSpec, build_store

    build_store(tmp_path / "store", [ModelSpec("gpt2", 2, 32, concepts=["royalty", "negation"])],
                n_pos=12, n_neg=12)
    store = Store(tmp_path / "store")
    parts = {"model": "gpt2", "concept": "royalty"}
    t = read_table(store, "scores", parts)
    sig = pc.and_(t["significant"], pc.invert(t["lexical"])).to_numpy(zero_copy_only=False)
    only = np.flatnonzero(sig)[0]
    sel = t["selectivity"].to_numpy().copy()
    sel[only] = -0.01
    t = t.set_column(t.schema.get_field_index("selectivity"), "selectivity", pa.array(sel, t["selectivity"].type))
    store.write_partition("scores", parts, t, key="flipped", run_id="flipped")
    labels = label.label_model(store, "gpt2", run_id="labels", force=True)
    assert labels is not None and labels.num_rows > 0
    got = {(r["layer"], r["neuron"]): r["concepts"] for r in labels.to_pylist()}
    who = (int(t["layer"][only].as_py()), int(t["neuron"][only].as_py()))
    assert "royalty" not in got.get(who, [])
