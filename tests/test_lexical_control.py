"""A probe whose sides differ by a constant word finds no concept neuron, even where the word
drives planted neurons; a built-in concept is scored beside its lexical control."""
from __future__ import annotations

import numpy as np
import pytest

import neurolens as nl
from neurolens.probes.types import Example, ProbeSet

NOUNS = ["river", "garden", "letter", "window", "market", "bridge", "song", "storm", "field", "bottle",
         "horse", "city", "teacher", "apple", "lamp", "coat", "road", "train", "cup", "door",
         "forest", "ship", "table", "cloud"]


@pytest.fixture(scope="module")
def planted(planted_factory):
    return planted_factory("gpt2")


def _constant_word_probe(pos: str, neg: str) -> ProbeSet:
    ex = []
    for g, n in enumerate(NOUNS):
        for k, frame in enumerate(("The {w} looked at the {n}.", "Near the {n} stood the {w}.",
                                   "The {n} was seen by the {w}.")):
            for label, w in ((1, pos), (0, neg)):
                text = frame.replace("{n}", n).replace("{w}", w)
                ex.append(Example(len(ex), label, f"g{g}", "test" if g >= 16 else "train", text=text))
    return ProbeSet("constant_word", "text", ex, source="custom")


def test_a_constant_word_swap_yields_no_concept_neuron(planted, tmp_path):
    """'king' against 'farmer' in every group: the planted royalty neurons answer the word and
    pass the group test, but the probe cannot tell them from word neurons, so none is counted."""
    m = nl.load(planted.path, device="cpu")
    f = m.find(_constant_word_probe("king", "farmer"), layers=planted.planted_layers, out=tmp_path,
               importance=False, report=False, progress=False)
    sc = f.scores
    sig = sc["significant"].to_numpy()
    assert sig.sum() >= 1                                # the word does drive neurons
    assert sc["lexical"].to_numpy()[sig].all()           # every one of them flagged lexical
    assert sc["rank"].is_null().all() and f.top(10).height == 0
    assert "'king'" in f.note and "no concept-specific neuron" in f.baseline
    assert f.summary()["significant"] == 0


def test_builtin_concept_is_scored_beside_its_control(planted, tmp_path):
    m = nl.load(planted.path, device="cpu")
    f = m.find("royalty", layers=planted.planted_layers, out=tmp_path, importance=False, report=False,
               progress=False)
    ctrl = nl.Store(tmp_path).sql("SELECT layer, neuron, significant FROM scores "
                                  "WHERE concept = 'royalty+control' ORDER BY layer, neuron")
    sc = f.scores.sort("layer", "neuron")
    assert ctrl.height == sc.height > 0
    np.testing.assert_array_equal(sc["lexical"].to_numpy(), ctrl["significant"].to_numpy())
    assert f.baseline.startswith("royalty: ") and "a word swap without royalty: " in f.baseline
    ranked = sc.filter(sc["rank"].is_not_null())
    assert not ranked["lexical"].any() and ranked["significant"].all()
    assert (ranked["direction"] == 1).all()
