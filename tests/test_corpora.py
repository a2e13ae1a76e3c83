"""Corpus readers: every format gives the same documents; WordNet's glosses carry its categories."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neurolens.probes.corpora import WORDNET_DIR, LEXNAMES, cut, load_corpus, wordnet

TEXTS = ["the king spoke", "a dog ran", "the queen smiled at the crowd"]


def test_every_format_reads_the_same_documents(tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(TEXTS) + "\n\n")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(TEXTS)))
    pq.write_table(pa.table({"text": TEXTS, "n": [1, 2, 3]}), tmp_path / "c.parquet")
    for f in ("a.txt", "b.jsonl", "c.parquet"):
        c = load_corpus(str(tmp_path / f))
        assert c.texts == TEXTS and c.name == f.split(".")[0]
    folder = load_corpus(str(tmp_path))
    assert folder.texts == TEXTS * 3
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": TEXTS}).save_to_disk(str(tmp_path / "ds"))
    assert load_corpus(str(tmp_path / "ds")).texts == TEXTS


@pytest.mark.skipif(not (WORDNET_DIR / "data.noun").exists(), reason="wordnet-base is not installed")
def test_wordnet_glosses_and_categories():
    c = wordnet()
    assert len(c.texts) == 117659                 # every synset of WordNet 3.0
    assert set(c.categories) <= set(LEXNAMES) and len(set(c.categories)) == 45
    i = next(i for i, t in enumerate(c.texts) if t.startswith("the act of terminating a project"))
    assert c.categories[i] == "noun.act" and '"I wasted a year' in c.texts[i]


def test_excerpts_keep_words_and_length(minilm):
    from neurolens.probes.corpora import Corpus

    ex = cut(Corpus("t", TEXTS * 5), minilm.processor, length=12)
    assert ex.ids.shape[1] == 12 and (ex.lengths[:-1] == 12).all()
    assert (ex.ids[:, 0] == minilm.processor.cls_token_id).all()
    m = ex.concept_mask(["king", "queen"])
    toks = minilm.processor.convert_ids_to_tokens(ex.ids[m].tolist())
    assert set(toks) == {"king", "queen"} and m.sum() == 10


@pytest.mark.parametrize("max_tokens", [None, 3000])
def test_chunked_tokenising_cuts_the_same_excerpts(minilm, max_tokens):
    """Documents tokenised a few at a time (bounded memory) give the excerpts, words and
    categories of one call over the whole corpus; the vocabulary too when all of it is read."""
    from neurolens.probes.corpora import Corpus

    c = wordnet() if WORDNET_DIR.exists() else None
    c = Corpus("t", c.texts[:400], c.categories[:400]) if c else Corpus("t", TEXTS * 40, ["a", "b"] * (len(TEXTS) * 20))
    whole = cut(c, minilm.processor, length=16, max_tokens=max_tokens, chunk=1 << 40)
    parts = cut(c, minilm.processor, length=16, max_tokens=max_tokens, chunk=500)
    for f in ("ids", "lengths", "cat"):
        assert (getattr(whole, f) == getattr(parts, f)).all(), f
    word = lambda e: [e.words[w] if w >= 0 else None for w in e.word.ravel()]  # noqa: E731
    assert word(whole) == word(parts) and (whole.word >= 0).sum() > 100
    if max_tokens is None:
        assert list(whole.words) == list(parts.words)
    else:
        assert whole.n_tokens <= max_tokens + 16
