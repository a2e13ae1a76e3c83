"""Built-in concepts, custom probe files, vision generators and `neurolens concepts`."""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from neurolens.probes import (ProbeError, ProbeSet, list_concepts, load_concept, load_image,
                              load_probe_file, load_probes)
from neurolens.probes import vision

# Regenerate only when the built-in data changes on purpose:
#   python -c "import neurolens.probes as p; print({c.name: p.load_concept(c.name).sha for c in p.list_concepts()})"
GOLDEN_SHA = {
    "animals": "0bf738c47d57190a", "colors": "270bbc35cb250ef2", "comparatives": "0548392c3cd595f2",
    "emotion": "ae48f914281eba40", "food": "eaf4e933bcdfbf0e", "future_tense": "3575677c7a3a55ad",
    "gender": "23dec117a014eea5", "law": "07451c8dfd50a695", "medicine": "bb4ec8675eea347f",
    "negation": "a4fdc42766d3afe8", "numbers": "5b6984c3dc7721c7", "past_tense": "e7e761ad92ab59c7",
    "places": "4e8da68e71dcfd40", "plural": "9a934ef373ff3bd4", "questions": "e9477bf868c6b66a",
    "royalty": "0b7949e9804c8e1c", "sentiment": "319e3c26bd83b3a4", "sports": "8e0d17ee52fccfa3",
    "stripes": "6dbae273adefe923", "checkerboard": "210b3e4efe3a6f88", "dots": "b5f21a7ccda7576f",
    "red": "cab9f494978451ee", "blue": "c516eaa4b2ec306e", "grid": "2777ffaa445e0e16",
    "circles": "e2d4899c8f2019bb",
}
TEXT = [c.name for c in list_concepts() if c.modality == "text"]
VISION = [c.name for c in list_concepts() if c.modality == "vision"]
WITH_TARGETS = ["royalty", "negation", "past_tense", "sentiment", "plural", "gender"]
TOKEN = re.compile(r"\w+|[^\w\s]")


def test_builtin_catalogue() -> None:
    assert len(TEXT) >= 16 and len(VISION) >= 6
    assert {"royalty", "negation", "past_tense", "sentiment"} <= set(TEXT)
    assert {"stripes", "checkerboard", "dots", "red", "circles"} <= set(VISION)


@pytest.mark.parametrize("name", TEXT)
def test_text_balance_and_uniqueness(name: str) -> None:
    # 32 groups x 5 frames (negation: 3 frames in some test groups)
    ps = load_concept(name)
    assert ps.modality == "text" and ps.n_pos >= 140 and ps.n_neg >= 140
    texts = [e.text for e in ps.examples]
    assert len(set(texts)) == len(texts)
    assert [e.example_id for e in ps.examples] == list(range(len(ps.examples)))


@pytest.mark.parametrize("name", TEXT + VISION)
def test_group_split(name: str) -> None:
    ps = load_concept(name)
    train, test = ps.split("train"), ps.split("test")
    assert not {e.group for e in train} & {e.group for e in test}
    for part in (train, test):
        assert {e.label for e in part} == {0, 1}
    assert 0.2 <= len(test) / len(ps.examples) <= 0.4
    split_of_pair = defaultdict(set)
    for e in ps.examples:
        split_of_pair[e.pair_id].add(e.split)
    assert all(len(s) == 1 for s in split_of_pair.values())


# ---------------------------------------------------------------- groups: the unit of inference

N_NEURONS = 9216          # MiniLM's MLP neurons: the multiple-testing burden of a real run
ALPHA = 0.05
# what the deterministic by-group split gives every built-in concept today
GROUPS, TRAIN_GROUPS, TEST_GROUPS = 32, 22, 10


def _groups(examples) -> dict[str, dict[int, int]]:
    out: dict[str, dict[int, int]] = defaultdict(lambda: {0: 0, 1: 0})
    for e in examples:
        out[e.group][e.label] += 1
    return dict(out)


@pytest.mark.parametrize("name", TEXT + VISION)
def test_builtin_groups_are_paired_and_many(name: str) -> None:
    ps = load_concept(name)
    train, test = _groups(ps.split("train")), _groups(ps.split("test"))
    assert len(_groups(ps.examples)) == GROUPS
    assert (len(train), len(test)) == (TRAIN_GROUPS, TEST_GROUPS)
    assert not set(train) & set(test)
    # paired design: every group, train or test, holds both labels
    assert all(c[0] > 0 and c[1] > 0 for c in (*train.values(), *test.values()))
    if ps.modality == "text":
        assert ps.n_pos >= 140 and ps.n_neg >= 140   # 32 groups x 5 frames (negation: 3 in some test groups)
        # a group is one concept word (or construction: "Can she" / "Can he") with its matched negative
        for g, exs in _by_group(ps.examples).items():
            words = {lab: {e.text[e.span[0]:e.span[1]] for e in exs if e.label == lab} for lab in (0, 1)}
            assert 1 <= len(words[1]) <= 2 and len(words[0]) == len(words[1]), (g, words)
            assert not words[0] & words[1], (g, words)


def _by_group(examples) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for e in examples:
        out[e.group].append(e)
    return out


def test_concept_words_are_not_shared_between_groups() -> None:
    """Distinct groups are distinct words: no concept word is split across train and test."""
    for name in TEXT:
        ps = load_concept(name)
        side = {}
        for e in ps.examples:
            if e.label == 1:
                word = e.text[e.span[0]:e.span[1]].lower()
                assert side.setdefault(word, e.group) == e.group, (name, word)


def _synthetic_run(examples, rng: np.random.Generator, n_null: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-group paired differences d_g (G x neurons) on the train split: column 0 a perfect
    neuron (within every group the concept examples sit above the others; the size of the gap
    varies from group to group, as it does for real words), the rest null neurons."""
    train = [e for e in examples if e.split == "train"]
    groups = sorted({e.group for e in train})
    gi = np.array([groups.index(e.group) for e in train])
    y = np.array([e.label for e in train], dtype=np.float64)
    offset, gap = rng.uniform(0.0, 0.4, len(groups)), rng.uniform(0.5, 1.5, len(groups))
    acts = rng.normal(0.0, 1.0, (len(train), 1 + n_null))
    acts[:, 0] = offset[gi] + gap[gi] * y + rng.uniform(-0.05, 0.05, len(train))
    d = np.empty((len(groups), acts.shape[1]))
    for g in range(len(groups)):       # group means by label: the DESIGN's paired units
        pos, neg = (gi == g) & (y == 1), (gi == g) & (y == 0)
        d[g] = acts[pos].mean(0) - acts[neg].mean(0)
    return d, acts[:, 0]


def _q_of_perfect(d: np.ndarray, n_neurons: int) -> float:
    from scipy import stats

    p = stats.ttest_1samp(d, 0.0, axis=0).pvalue
    # the null neurons not simulated are padded with p = 1 (they can only raise q for nobody)
    p_all = np.concatenate([p, np.ones(n_neurons - len(p))])
    return float(stats.false_discovery_control(p_all, method="bh")[0])


@pytest.mark.parametrize("name", TEXT + VISION)
def test_builtin_probes_have_power(name: str) -> None:
    """A perfect neuron reaches q < 0.05 over 9,216 neurons with the group as the unit
    (paired one-sample t over the train groups, df = G - 1, BH); with the 6 train groups
    the old negation probe had, the same neuron cannot."""
    rng = np.random.default_rng(sum(map(ord, name)))
    ps = load_concept(name)
    d, perfect = _synthetic_run(ps.examples, rng, n_null=1023)
    assert d.shape[0] == TRAIN_GROUPS
    assert (d[:, 0] > 0).all()           # perfect: it separates the sides within every group
    assert _q_of_perfect(d, N_NEURONS) < ALPHA
    # exact sign-flip bound: even a rank-based paired test on these groups could get there
    assert 2.0 / 2 ** d.shape[0] * N_NEURONS < ALPHA
    assert _q_of_perfect(d[:6], N_NEURONS) > ALPHA
    assert 2.0 / 2 ** 6 * N_NEURONS > ALPHA
    # the null neurons stay null: barely anything below q < 0.05 among them
    from scipy import stats

    q_null = stats.false_discovery_control(stats.ttest_1samp(d[:, 1:], 0.0, axis=0).pvalue, method="bh")
    assert (q_null < ALPHA).mean() <= 0.01


def _planted_probe_files(tmp_path):
    from neurolens.engine.planted import text as pt
    from neurolens.engine.planted import vision as pv

    out = {}
    for family in ("gpt2", "bert", "roberta"):
        ps, secondary = pt.make_probes(family, 0)
        d = tmp_path / family
        d.mkdir()
        out[family] = (ps, pt.write_probe_files(ps, secondary, d)[0])
    ps, dirs = pv.make_images(tmp_path / "resnet", 0)
    out["resnet"] = (ps, pv.write_probe_files(dirs, tmp_path / "resnet")[0])
    return out


def test_planted_probes_are_paired_with_enough_groups(tmp_path) -> None:
    for family, (ps, pf) in _planted_probe_files(tmp_path).items():
        # the builder's own split (what selfcheck scores): test groups hold unseen words/palettes
        train, test = _groups(ps.split("train")), _groups(ps.split("test"))
        assert len(train) + len(test) >= 24 and len(train) >= 16 and len(test) >= 8, family
        assert not set(train) & set(test)
        assert all(c[0] and c[1] for c in (*train.values(), *test.values())), family
        if family != "resnet":     # a group is a word pair "king-farmer"; test royalty words are unseen
            assert all(len(g.split("-")) == 2 for g in (*train, *test))
            assert not {g.split("-")[0] for g in test} & {g.split("-")[0] for g in train}, family
        # the probe file a user runs with --probes: the same groups, split by group hash
        loaded = load_probe_file(str(pf))
        assert _groups(loaded.examples) == _groups(ps.examples), family
        tr, te = _groups(loaded.split("train")), _groups(loaded.split("test"))
        assert len(tr) >= 16 and len(te) >= 8 and all(c[0] and c[1] for c in (*tr.values(), *te.values()))
        d, _ = _synthetic_run(loaded.examples, np.random.default_rng(1), n_null=255)
        assert _q_of_perfect(d, 1024) < ALPHA, family      # a planted model has ~1,000 neurons


@pytest.mark.parametrize("name", TEXT + VISION)
def test_stable_sha(name: str) -> None:
    assert load_concept(name).sha == load_concept(name).sha == GOLDEN_SHA[name]


@pytest.mark.parametrize("name", TEXT)
def test_minimal_pairs_differ_only_at_span(name: str) -> None:
    pairs = defaultdict(dict)
    for e in load_concept(name).examples:
        pairs[e.pair_id][e.label] = e
    assert len(pairs) == load_concept(name).n_pos
    for pair in pairs.values():
        pos, neg = pair[1], pair[0]
        assert pos.group == neg.group
        (ps, pe), (ns, ne) = pos.span, neg.span
        assert pos.text[:ps] == neg.text[:ns] and pos.text[pe:] == neg.text[ne:]
        assert TOKEN.findall(pos.text[:ps]) == TOKEN.findall(neg.text[:ns])
        assert TOKEN.findall(pos.text[pe:]) == TOKEN.findall(neg.text[ne:])
        assert pos.text[ps:pe] != neg.text[ns:ne]
        for e, (s, t) in ((pos, pos.span), (neg, neg.span)):  # the span covers whole words
            assert e.text[s:t].strip() == e.text[s:t] and e.text[s:t]
            assert s == 0 or not e.text[s - 1].isalnum()
            assert t == len(e.text) or not e.text[t].isalnum()


@pytest.mark.parametrize("name", WITH_TARGETS)
def test_targets_continue_the_text(name: str) -> None:
    ps = load_concept(name)
    for e in ps.examples:
        assert e.target and re.fullmatch(r"[a-z]+", e.target), e
        assert not e.text.endswith(".")
    by_label = {lab: {e.target for e in ps.examples if e.label == lab} for lab in (0, 1)}
    assert by_label[0] != by_label[1]


def test_unknown_concept_is_one_line() -> None:
    with pytest.raises(ProbeError, match=r"unknown concept 'dog'; known: .*royalty") as exc:
        load_concept("dog")
    assert "\n" not in str(exc.value)


def test_load_probes_dispatch(tmp_path) -> None:
    assert load_probes("royalty", None).concept == "royalty"
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"concept": "mine", "positive": [f"p {i}" for i in range(10)],
                             "negative": [f"n {i}" for i in range(10)]}))
    assert load_probes(None, str(f)).concept == "mine"
    assert load_probes("renamed", str(f)).concept == "renamed"
    with pytest.raises(ProbeError):
        load_probes(None, None)


# ---------------------------------------------------------------- custom text probes

def _texts(prefix: str, n: int = 12) -> list[str]:
    return [f"{prefix} sentence number {i}." for i in range(n)]


def test_custom_json_with_groups_and_targets(tmp_path) -> None:
    pos = [{"text": t, "group": f"g{i % 4}", "target": "throne"} for i, t in enumerate(_texts("king"))]
    f = tmp_path / "royal.json"
    f.write_text(json.dumps({"concept": "royal", "positive": pos, "negative": _texts("farmer")}))
    ps = load_probe_file(f)
    assert isinstance(ps, ProbeSet) and ps.concept == "royal" and ps.modality == "text"
    assert (ps.n_pos, ps.n_neg) == (12, 12)
    assert ps.examples[0].target == "throne" and ps.examples[0].group == "g0"
    assert {e.label for e in ps.split("test")} == {0, 1}
    assert {e.label for e in ps.split("train")} == {0, 1}
    assert not {e.group for e in ps.split("train")} & {e.group for e in ps.split("test")}
    assert load_probe_file(f).sha == ps.sha


def test_ungrouped_examples_are_groups_of_their_own(tmp_path) -> None:
    """Plain strings: nothing says which examples are correlated, so each is its own unit
    (the group-level test then reduces to Welch on examples), named by content, not order."""
    pos, neg = _texts("king", 40), _texts("farmer", 40)
    f = tmp_path / "plain.json"
    f.write_text(json.dumps({"concept": "plain", "positive": pos, "negative": neg}))
    ps = load_probe_file(f)
    assert len({e.group for e in ps.examples}) == len(ps.examples) == 80
    assert all(e.group.startswith("auto-") for e in ps.examples)
    assert 0.2 <= len(ps.split("test")) / 80 <= 0.4
    assert {e.label for e in ps.split("test")} == {e.label for e in ps.split("train")} == {0, 1}
    f.write_text(json.dumps({"concept": "plain", "positive": pos[::-1], "negative": neg[::-1]}))
    again = {e.text: (e.group, e.split) for e in load_probe_file(f).examples}
    assert again == {e.text: (e.group, e.split) for e in ps.examples}


def test_custom_jsonl_and_csv(tmp_path) -> None:
    rows = [{"text": t, "label": 1} for t in _texts("yes")] + \
           [{"text": t, "label": "negative", "target": "no"} for t in _texts("no")]
    f = tmp_path / "answers.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ps = load_probe_file(f)
    assert ps.concept == "answers" and (ps.n_pos, ps.n_neg) == (12, 12)
    assert ps.examples[-1].target == "no"
    c = tmp_path / "answers.csv"
    c.write_text("text,label,group,target\n" + "".join(
        f"\"{r['text']}\",{r['label']},,{r.get('target', '')}\n" for r in rows))
    ps2 = load_probe_file(c)
    assert (ps2.n_pos, ps2.n_neg) == (12, 12) and ps2.examples[0].target is None
    assert [e.group for e in ps2.examples] == [e.group for e in ps.examples]


def _write(tmp_path, name: str, content: str | bytes):
    f = tmp_path / name
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    return f


def _ok_doc(**extra) -> dict:
    return {"concept": "c", "positive": _texts("a"), "negative": _texts("b"), **extra}


@pytest.mark.parametrize("name,content,pattern", [
    ("e.json", json.dumps({"concept": "c", "positive": [], "negative": _texts("b")}), "no positive examples"),
    ("few.json", json.dumps({"concept": "c", "positive": _texts("a", 3), "negative": _texts("b")}),
     "only 3 positive examples; need at least 10"),
    ("dup.json", json.dumps({"concept": "c", "positive": _texts("a"), "negative": _texts("a")}),
     "appears both positive and negative"),
    ("type.json", json.dumps(_ok_doc(positive=[1] * 12)), r"positive\[0\]: text must be a string, got int"),
    ("key.json", json.dumps(_ok_doc(colour="red")), "unknown key 'colour'"),
    ("item.json", json.dumps(_ok_doc(positive=[{"txt": "x"}] * 12)), "unknown key 'txt'"),
    ("bad.json", '{"concept": "c",\n "positive": [\n}', r"bad.json:3: bad JSON"),
    ("enc.json", b'{"concept": "c",\n "positive": ["\xff"]}', r"enc.json:2: not valid UTF-8"),
    ("list.json", "[1, 2]", "top level must be a JSON object"),
    ("name.json", json.dumps(_ok_doc(concept="a/b")), "concept name"),
    ("target.json", json.dumps(_ok_doc(positive=[{"text": t, "target": "two words"} for t in _texts("a")])),
     "target must be a single word"),
    ("l.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 7}\n', r"l.jsonl:2: label must be"),
    ("k.jsonl", '{"text": "a", "label": 1, "x": 2}\n', r"k.jsonl:1: unknown key 'x'"),
    ("j.jsonl", '{"text": "a", "label": 1}\n[1]\n', r"j.jsonl:2: each line must be a JSON object"),
    ("h.csv", "sentence,label\nx,1\n", r"h.csv:1: unknown key 'sentence'"),
    ("r.csv", "text,label\nx,1\ny,0,extra\n", r"r.csv:3: expected 2 fields, got 3"),
    ("z.csv", "", "empty CSV"),
    ("t.txt", "hello", "unsupported probe file type"),
])
def test_custom_errors(tmp_path, name: str, content, pattern: str) -> None:
    f = _write(tmp_path, name, content)
    with pytest.raises(ProbeError, match=pattern) as exc:
        load_probe_file(f)
    assert "\n" not in str(exc.value) and name in str(exc.value)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ProbeError, match="not found"):
        load_probe_file(tmp_path / "nope.json")


def test_groups_that_cannot_split(tmp_path) -> None:
    doc = {"positive": [{"text": t, "group": "one"} for t in _texts("a")],
           "negative": [{"text": t, "group": "two"} for t in _texts("b")]}
    f = _write(tmp_path, "g.json", json.dumps(doc))
    with pytest.raises(ProbeError, match="cannot split by group"):
        load_probe_file(f)


# ---------------------------------------------------------------- image folders

def _pngs(folder, n: int, colour: tuple[int, int, int], sub: str | None = None) -> None:
    d = folder / sub if sub else folder
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        px = np.full((16, 16, 3), colour, np.uint8)
        px[0, 0] = (i, i, i)  # every picture distinct
        Image.fromarray(px).save(d / f"img{i:02d}.png")


def test_image_folder(tmp_path) -> None:
    root = tmp_path / "dogs"
    _pngs(root / "positive", 6, (200, 0, 0), "terrier")
    _pngs(root / "positive", 6, (190, 0, 0), "poodle")
    _pngs(root / "negative", 12, (0, 0, 200))
    (root / "negative" / "notes.txt").write_text("ignored")
    ps = load_probe_file(root)
    assert ps.concept == "dogs" and ps.modality == "vision" and (ps.n_pos, ps.n_neg) == (12, 12)
    assert {e.group for e in ps.examples if e.label == 1} == {"terrier", "poodle"}
    img = load_image(ps.examples[0].image)
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    spec = _write(tmp_path, "spec.json", json.dumps(
        {"concept": "dog", "positive_dir": "dogs/positive", "negative_dir": "dogs/negative"}))
    assert load_probe_file(spec).n_pos == 12


def test_unreadable_image(tmp_path) -> None:
    root = tmp_path / "bad"
    _pngs(root / "positive", 12, (200, 0, 0))
    _pngs(root / "negative", 12, (0, 0, 200))
    (root / "negative" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ProbeError, match="broken.png: unreadable image"):
        load_probe_file(root)
    with pytest.raises(ProbeError, match="unreadable image"):
        load_image(str(root / "negative" / "broken.png"))


def test_image_duplicates_across_sides(tmp_path) -> None:
    root = tmp_path / "dup"
    _pngs(root / "positive", 12, (200, 0, 0))
    _pngs(root / "negative", 12, (200, 0, 0))
    with pytest.raises(ProbeError, match="appears both positive and negative"):
        load_probe_file(root)


def test_image_folder_missing_side(tmp_path) -> None:
    _pngs(tmp_path / "x" / "positive", 12, (1, 2, 3))
    with pytest.raises(ProbeError, match="negative image folder not found"):
        load_probe_file(tmp_path / "x")


# ---------------------------------------------------------------- vision generators

@pytest.mark.parametrize("name", VISION)
def test_vision_generator_deterministic(name: str) -> None:
    ps = load_concept(name)
    assert ps.n_pos >= 150 and ps.n_neg >= 150
    ref = ps.examples[5].image
    a, b = load_image(ref), load_image(ref)
    assert a.shape == (224, 224, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(load_image(ps.examples[4].image), a)


_FY = np.fft.fftfreq(224)[:, None] * 224
_FR = np.hypot(_FY, np.fft.rfftfreq(224)[None, :] * 224)


def _periodicity(img: np.ndarray) -> float:
    """Share of non-low-frequency spectral energy in its single strongest peak."""
    g = img.astype(np.float32).mean(axis=2)
    spec = (np.abs(np.fft.rfft2(g - g.mean())) ** 2)[_FR >= 5]
    return float(spec.max() / spec.sum())


def _red_share(img: np.ndarray, channel: int) -> float:
    x = img.astype(np.int16)
    others = np.delete(x, channel, axis=2).max(axis=2)
    return float(((x[..., channel] > 120) & (x[..., channel] - others > 80)).mean())


def _orientation_entropy(img: np.ndarray) -> float:
    """Entropy of edge orientations: curves spread over all angles, squares only two."""
    g = img.astype(np.float32).mean(axis=2)
    gy, gx = np.gradient(g)
    mag = np.hypot(gx, gy)
    keep = mag > 20
    hist, _ = np.histogram(np.arctan2(gy[keep], gx[keep]) % np.pi, bins=12, range=(0, np.pi))
    p = hist / max(hist.sum(), 1)
    return float(-(p[p > 0] * np.log(p[p > 0])).sum())


FEATURE = {
    "stripes": _periodicity, "checkerboard": _periodicity, "dots": _periodicity, "grid": _periodicity,
    "red": lambda im: _red_share(im, 0), "blue": lambda im: _red_share(im, 2),
    "circles": _orientation_entropy,
}


@pytest.mark.parametrize("name", VISION)
def test_vision_negatives_lack_feature(name: str) -> None:
    ps = load_concept(name)
    stat = FEATURE[name]
    pos = [stat(load_image(e.image)) for e in ps.examples[:40] if e.label == 1]
    neg = [stat(load_image(e.image)) for e in ps.examples[:40] if e.label == 0]
    # paired: the concept image beats its own matched negative almost always
    assert np.mean(np.array(pos) > np.array(neg)) >= 0.9
    # matched negatives: same overall colour statistics on average
    mp = np.mean([load_image(e.image).mean() for e in ps.examples[:20] if e.label == 1])
    mn = np.mean([load_image(e.image).mean() for e in ps.examples[:20] if e.label == 0])
    assert abs(mp - mn) < 25


def test_builtin_image_refs() -> None:
    assert np.array_equal(load_image("builtin:stripes/3"), vision.generate("stripes", 3))
    for bad in ("builtin:nothing/1", "builtin:stripes/x", "builtin:stripes"):
        with pytest.raises(ProbeError):
            load_image(bad)


# ---------------------------------------------------------------- CLI

def test_concepts_command_json(capsys) -> None:
    from neurolens.commands import concepts

    assert concepts.run(argparse.Namespace(format="json")) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sum(r["modality"] == "text" for r in rows) >= 16
    assert sum(r["modality"] == "vision" for r in rows) >= 6
    royalty = next(r for r in rows if r["name"] == "royalty")
    assert royalty["n_pos"] >= 140 and "king" in royalty["groups"]
    for r in rows:
        assert (r["n_groups"], r["n_train_groups"], r["n_test_groups"]) == (GROUPS, TRAIN_GROUPS, TEST_GROUPS)
        assert len(r["groups"]) == r["n_groups"]


def test_concepts_command_table(capsys) -> None:
    from neurolens.commands import concepts

    parser = argparse.ArgumentParser()
    concepts.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["concepts"])
    assert concepts.run(args) == 0
    out = capsys.readouterr().out
    assert "royalty" in out and f"{GROUPS} ({TRAIN_GROUPS} train" in out


def test_cli_concepts_json() -> None:
    import subprocess
    import sys

    try:
        from neurolens.cli import build_parser

        build_parser()
    except ImportError as exc:  # another command module not written yet
        pytest.skip(f"CLI not complete: {exc}")
    out = subprocess.run([sys.executable, "-m", "neurolens", "concepts", "--format", "json"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    rows = json.loads(out)
    assert sum(r["modality"] == "text" for r in rows) >= 16
    assert sum(r["modality"] == "vision" for r in rows) >= 6


def test_sha_follows_the_examples() -> None:
    """The hash is memoised for the same example objects, and changes with them."""
    from dataclasses import replace

    p = load_concept("royalty")
    first = p.sha
    assert p.sha == first
    p.examples = [replace(e, label=1 - e.label) if i == 0 else e for i, e in enumerate(p.examples)]
    assert p.sha != first
    p.examples[0] = replace(p.examples[0], label=1 - p.examples[0].label)   # in place, back again
    assert p.sha == first
    p.concept = "crowns"
    assert p.sha != first
