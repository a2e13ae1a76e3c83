"""Group-level inference on a real model (MiniLM), through the real pipeline.

* cell design (one label per group): p and q equal scipy's Welch t on the cell means
  and BH, for both kernel backends;
* null controls: a probe whose two sides are arbitrary sets of whole subjects, and a
  random split of the same sentences as plain strings, leave at most 1 % of neurons
  with q < 0.05, and the report says no neuron is significant.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from neurolens.store import Store, read_layer, read_table

SUBJECTS = [
    "the farmer", "the doctor", "my uncle", "the pilot", "her sister", "the teacher", "a sailor",
    "the baker", "our neighbour", "the judge", "a student", "the nurse", "his cousin", "the miner",
    "a painter", "the captain", "the plumber", "my aunt", "the mayor", "a tourist", "the lawyer",
    "the waiter", "a poet", "the chemist", "her father", "the gardener", "a soldier", "the priest",
    "the driver", "my friend", "the tailor", "a hunter", "the banker", "the clerk", "his mother",
    "the singer", "a fisherman", "the dentist", "the guard", "a carpenter",
]
TEMPLATES = [
    "{s} walked to the market this morning.", "Yesterday {s} read the newspaper by the window.",
    "{s} painted the fence before lunch.", "After dinner {s} washed the dishes.",
    "{s} took the early train to the city.", "On Sunday {s} visited the old museum.",
    "{s} carried a heavy box up the stairs.", "Late at night {s} wrote a long letter.",
    "{s} planted tomatoes in the garden.", "In the evening {s} listened to the radio.",
]


def _sentences():
    return [(s, t.format(s=s[0].upper() + s[1:] if t.startswith("{s}") else s)) for s in SUBJECTS
            for t in TEMPLATES]


def _run(out, probe: dict, *, report: bool):
    from neurolens.pipeline import RunConfig, run

    path = out / f"{probe['concept']}.json"
    path.write_text(json.dumps(probe))
    return run(RunConfig(model="minilm", probes=str(path), out=str(out), importance=False,
                         report=report, relabel=False))


@pytest.fixture(scope="module")
def subject_probe(tmp_path_factory):
    """40 subjects x 10 sentences; 20 subjects (all their sentences) on each side, at random."""
    rng = np.random.default_rng(15)
    side = dict(zip(SUBJECTS, rng.permutation([1] * 20 + [0] * 20)))
    pos, neg = [], []
    for s, text in _sentences():
        (pos if side[s] else neg).append({"text": text, "group": s})
    out = tmp_path_factory.mktemp("null_subjects")
    res = _run(out, {"concept": "subjects", "positive": pos, "negative": neg}, report=True)
    return out, res


@pytest.fixture(scope="module")
def plain_probe(tmp_path_factory):
    """The same 400 sentences, as plain strings, split in half at random."""
    rng = np.random.default_rng(16)
    texts = [t for _, t in _sentences()]
    perm = rng.permutation(len(texts))
    out = tmp_path_factory.mktemp("null_plain")
    probe = {"concept": "random_half", "positive": [texts[i] for i in perm[:200]],
             "negative": [texts[i] for i in perm[200:]]}
    return out, _run(out, probe, report=False)


def _scores(out, concept):
    return read_table(Store(out / "store"), "scores", {"model": "minilm", "concept": concept}).to_pydict()


def test_whole_groups_null_finds_nothing(subject_probe):
    out, res = subject_probe
    sc = _scores(out, "subjects")
    q = np.array(sc["q_value"])
    assert len(q) == 6 * 1536
    assert (q < 0.05).mean() <= 0.01
    assert res.note is None  # 28 train cells: a perfect neuron could have been found
    html = (out / "reports" / "minilm__subjects.html").read_text()
    assert "No neuron of minilm passes q &lt; 0.05" in html
    assert "none of the" in html and "is significant" in html


def test_plain_strings_random_split_null(plain_probe):
    out, res = plain_probe
    sc = _scores(out, "random_half")
    q = np.array(sc["q_value"])
    assert (q < 0.05).mean() <= 0.01
    # every plain string is a unit of its own: Welch on the train examples
    from neurolens.probes import load_probes

    n_train = sum(e.split == "train" for e in load_probes(None, str(out / "random_half.json")).examples)
    assert set(sc["n_units"]) == {n_train} and res.n_units == n_train


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_cell_design_equals_scipy_welch_on_cell_means(subject_probe, backend):
    from neurolens.score import example_arrays
    from neurolens.numerics import ScoreAccumulator
    from neurolens.probes import load_probes

    out, res = subject_probe
    sc = _scores(out, "subjects")
    probes = load_probes(None, str(out / "subjects.json"))
    ex_ids, train, labels, grp = example_arrays(probes)
    store = Store(out / "store")
    acc = ScoreAccumulator(backend=backend)
    refs, n_cells = [], None
    for l in range(6):
        ids, acts = read_layer(store, "minilm", "subjects", l)
        pos = np.searchsorted(ex_ids, ids)
        keep = train[pos]
        x, y, g = acts[keep], labels[pos][keep], grp[pos][keep]
        acc.add(l, x, y, groups=g)
        cells = np.unique(g)
        means = np.stack([x[g == c].astype(np.float64).mean(0) for c in cells])
        lab = np.array([y[g == c][0] for c in cells])
        refs.append(stats.ttest_ind(means[lab == 1], means[lab == 0], equal_var=False, axis=0).pvalue)
        n_cells = len(cells)
    cols = acc.finalize()
    p_ref = np.concatenate(refs)
    assert not acc.design.paired and acc.design.n_units == n_cells
    np.testing.assert_allclose(cols["p_value"], p_ref, atol=1e-6)
    np.testing.assert_allclose(np.array(sc["p_value"]), p_ref, atol=1e-6)
    q_ref = stats.false_discovery_control(p_ref, method="bh")
    np.testing.assert_allclose(cols["q_value"], q_ref, atol=1e-6)
    np.testing.assert_allclose(np.array(sc["q_value"]), q_ref, atol=1e-6)
    assert set(sc["n_units"]) == {n_cells}
