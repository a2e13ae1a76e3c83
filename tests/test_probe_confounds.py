"""The built-in text probes contrast the concept and nothing else that their groups share.

"Separates": a token's net share over groups, m = (#groups where it is more frequent among
the positives - #groups where it is more frequent among the negatives) / G, reaches 1/4.
A neuron that answers only that token has a standardised group effect of at most
sqrt(m / (1 - m)) (0.58 at m = 1/4), below the effect gate of 0.8 that `significant`
requires, so no built-in probe can make a word-only neuron significant (docs/scores.md).
"""
from __future__ import annotations

import json

import pytest

from neurolens.constants import EFFECT_GATE
from neurolens.probes import load_concept
from neurolens.probes.confounds import CONFOUNDED, SEPARATES, confound_note, net_shares, separating
from neurolens.probes.text import DATA_DIR, concept_names, control_name
from neurolens.probes.types import Example

CONCEPTS = concept_names()


def _frame(e: Example) -> str:
    return e.text[: e.span[0]] + "{w}" + e.text[e.span[1]:]


def test_the_thresholds_follow_from_the_gate():
    bound = lambda m: (m / (1 - m)) ** 0.5          # noqa: E731 - the largest word-only effect
    assert bound(SEPARATES) < EFFECT_GATE
    assert bound(CONFOUNDED) == pytest.approx(EFFECT_GATE)


@pytest.mark.parametrize("name", CONCEPTS + tuple(control_name(c) for c in CONCEPTS))
def test_no_token_separates_the_sides(name):
    ex = load_concept(name).examples
    for split in (None, "train"):
        hit = separating(ex, SEPARATES, split=split)
        assert not hit, f"{name} ({split or 'all'} groups): {hit} separate the sides"


@pytest.mark.parametrize("name", CONCEPTS)
def test_pairs_differ_only_in_the_concept_word_and_groups_draw_their_own_frames(name):
    ps = load_concept(name)
    by_pair: dict[int, list[Example]] = {}
    for e in ps.examples:
        by_pair.setdefault(e.pair_id, []).append(e)
    for pos, neg in (sorted(v, key=lambda e: -e.label) for v in by_pair.values()):
        assert (pos.label, neg.label, pos.group) == (1, 0, neg.group)
        assert _frame(pos) == _frame(neg)                  # the same frame around the swapped word
        assert pos.text[pos.span[0]:pos.span[1]] != neg.text[neg.span[0]:neg.span[1]]
    frames = {s: {_frame(e) for e in ps.examples if e.split == s} for s in ("train", "test")}
    assert len(frames["train"] | frames["test"]) >= 8
    assert not frames["train"] & frames["test"], "a test frame is used by a train group"
    words = {s: {e.text[e.span[0]:e.span[1]].lower() for e in ps.examples if e.split == s and e.label == 1}
             for s in ("train", "test")}
    assert not words["train"] & words["test"], "a test group's concept word occurs in train"
    per_group: dict[str, set[str]] = {}
    for e in ps.examples:
        if e.split == "train":
            per_group.setdefault(e.group, set()).add(_frame(e))
    assert len({frozenset(f) for f in per_group.values()}) >= 5, "train groups share one frame set"
    assert len(per_group) >= 16 and len({e.group for e in ps.examples}) - len(per_group) >= 8


@pytest.mark.parametrize("name", CONCEPTS)
def test_control_keeps_frames_and_negatives_and_drops_the_concept_word(name):
    ps, ctrl = load_concept(name), load_concept(control_name(name))
    assert [(e.group, e.split, e.label) for e in ps.examples] == [(e.group, e.split, e.label) for e in ctrl.examples]
    for a, b in zip(ps.examples, ctrl.examples):
        assert _frame(a) == _frame(b)
        if a.label == 0:
            assert a.text == b.text
    concept_words = {e.text[e.span[0]:e.span[1]].lower() for e in ps.examples if e.label == 1}
    assert not concept_words & {e.text[e.span[0]:e.span[1]].lower() for e in ctrl.examples if e.label == 1}


def _probe(pos_word: str, neg_word: str) -> list[Example]:
    nouns = ["dog", "chair", "river", "teacher", "apple", "bridge", "window", "garden", "letter", "train",
             "coat", "doctor", "lamp", "market", "song", "storm", "field", "bottle", "horse", "city"]
    out = []
    for g, n in enumerate(nouns):
        for label, w in ((1, pos_word), (0, neg_word)):
            out.append(Example(len(out), label, f"g{g}", "train" if g < 14 else "test",
                               text=f"The {n} was there {w}."))
    return out


def test_a_constant_word_is_caught():
    ex = _probe("yesterday", "today")
    assert separating(ex) == {"yesterday": 1.0, "today": -1.0}
    assert net_shares(ex, "train")["yesterday"] == 1.0
    assert "yesterday" in confound_note(ex)
    assert confound_note(load_concept("royalty").examples) is None


def test_the_old_future_tense_probe_would_fail():
    """The former future_tense put 'will' in every positive: caught by the same rule."""
    ex = _probe("will", "now")
    assert "will" in separating(ex)


def test_the_data_files_say_how_they_were_made():
    for name in CONCEPTS:
        d = json.loads((DATA_DIR / f"{name}.json").read_text())
        assert d["generated_by"].startswith("probes/data/gen_text.py")
