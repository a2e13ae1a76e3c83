"""Corpora for scans: documents from text files, jsonl, Parquet, folders, `datasets` folders, or
the embedded default `wordnet` (WordNet 3.0 glosses and example sentences, labelled by their
lexicographer file: 45 categories), cut into excerpts of a fixed token length.

Documents are tokenised in one batch call, joined into one stream with a separator token
between documents, and cut into excerpts of `length` tokens (the model's special tokens
included), so every excerpt but the last is full and no padding is wasted. Every token keeps
the lowercase word it belongs to and its document's category, so evidence can ask whether an
excerpt's maximum falls on a concept word.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neurolens.errors import ProbeError

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_HINT = ("the default corpus needs WordNet 3.0 (Debian/Ubuntu: apt-get install wordnet-base; "
                "elsewhere pass --corpus FILE)")
#: lexnames(5WN): the lexicographer file numbers of WordNet 3.0
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
    "adj.ppl").split()
_SUFFIXES = (".txt", ".jsonl", ".parquet")


@dataclass
class Corpus:
    """Documents in a fixed order, with an optional category per document."""

    name: str
    texts: list[str]
    categories: list[str] | None = None

    @property
    def sha(self) -> str:
        h = hashlib.sha256()
        for t in self.texts:
            h.update(t.encode())
            h.update(b"\0")
        if self.categories is not None:
            h.update("\0".join(self.categories).encode())
        return h.hexdigest()[:16]


@dataclass
class Excerpts:
    """A corpus cut for one tokenizer: ids [E, L] (right-padded), lengths [E], and per token
    the index of its lowercase word in `words` (-1 off words) and of its document's category
    in `categories` (-1 for special tokens or an uncategorised corpus)."""

    corpus: str
    ids: np.ndarray
    lengths: np.ndarray
    word: np.ndarray
    words: np.ndarray
    cat: np.ndarray
    categories: list[str]
    sha: str

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    def select(self, idx: np.ndarray) -> Excerpts:
        return Excerpts(self.corpus, self.ids[idx], self.lengths[idx], self.word[idx], self.words,
                        self.cat[idx], self.categories, self.sha)

    def concept_mask(self, words: set[str] | list[str]) -> np.ndarray:
        """[E, L] True where the token belongs to one of `words` (lowercase whole words)."""
        hit = np.isin(self.words, np.array(sorted({w.lower() for w in words}), dtype=object))
        out = np.zeros(self.word.shape, dtype=bool)
        on = self.word >= 0
        out[on] = hit[self.word[on]]
        return out


def corpus_name(spec: str) -> str:
    """The store's name for a corpus: `wordnet`, or the file/folder stem made plain."""
    if spec == "wordnet":
        return spec
    stem = Path(spec.rstrip("/")).name
    for s in _SUFFIXES:
        stem = stem.removesuffix(s)
    name = re.sub(r"[^A-Za-z0-9._+-]", "-", stem).lstrip("._+-")
    return name or "corpus"


def load_corpus(spec: str) -> Corpus:
    """A corpus from `wordnet`, a .txt/.jsonl/.parquet file, a folder of them, or a folder
    written by `datasets.Dataset.save_to_disk`."""
    if spec == "wordnet":
        return wordnet()
    p = Path(spec)
    if not p.exists():
        raise ProbeError(f"corpus {spec!r} not found (a .txt, .jsonl or .parquet file, a folder, or 'wordnet')")
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists():
            texts = _datasets_folder(p)
        else:
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in _SUFFIXES)
            if not files:
                raise ProbeError(f"corpus folder {spec} holds no .txt, .jsonl or .parquet file")
            texts = [t for f in files for t in _read_file(f)]
    else:
        texts = _read_file(p)
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ProbeError(f"corpus {spec} is empty: no text in it")
    return Corpus(corpus_name(spec), texts)


def _read_file(f: Path) -> list[str]:
    try:
        if f.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                t = pq.read_table(f, columns=["text"])
            except (KeyError, pa.ArrowInvalid) as e:
                if "text" not in str(e) and not isinstance(e, KeyError):
                    raise ProbeError(f"corpus file {f} is not readable Parquet: {e}") from None
                raise ProbeError(f"corpus file {f} has no 'text' column") from None
            return [x for x in t.column("text").to_pylist() if isinstance(x, str)]
        raw = f.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ProbeError(f"corpus file {f} is not UTF-8 text") from None
    except OSError as e:
        raise ProbeError(f"corpus file {f} cannot be read: {e.strerror or e}") from None
    if f.suffix == ".jsonl":
        out = []
        for i, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise ProbeError(f"corpus file {f}, line {i}: not JSON") from None
            if not isinstance(row, dict) or "text" not in row:
                raise ProbeError(f"corpus file {f}, line {i}: no 'text' field")
            out.append(str(row["text"]))
        return out
    if f.suffix == ".parquet":
        return []
    return [ln for ln in raw.splitlines() if ln.strip()]


def _datasets_folder(p: Path) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise ProbeError(f"corpus {p} is a `datasets` folder: pip install datasets to read it") from None
    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:  # noqa: BLE001 - any failure to read is the user's folder
        raise ProbeError(f"corpus {p} cannot be read as a `datasets` folder: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    if "text" not in ds.column_names:
        raise ProbeError(f"corpus {p} has no 'text' column (it has {', '.join(ds.column_names)})")
    return [t for t in ds["text"] if isinstance(t, str)]


def wordnet(root: Path = WORDNET_DIR) -> Corpus:
    """Every synset's gloss (definition and example sentences) as one document, labelled by
    its lexicographer file, shuffled once with a fixed seed so any prefix mixes every domain."""
    texts: list[str] = []
    cats: list[str] = []
    files = [root / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    if not all(f.exists() for f in files):
        raise ProbeError(WORDNET_HINT)
    for f in files:
        for line in f.read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue                                   # the license header
            head, gloss = line.split("|", 1)
            lex = int(head.split(" ", 2)[1])
            texts.append(gloss.strip())
            cats.append(LEXNAMES[lex] if 0 <= lex < len(LEXNAMES) else str(lex))
    order = np.random.default_rng(0).permutation(len(texts))
    return Corpus("wordnet", [texts[i] for i in order], [cats[i] for i in order])


# -- cutting ---------------------------------------------------------------------------------------
def _specials(tok: Any) -> tuple[list[int], list[int]]:
    """The tokenizer's own special tokens before and after a sequence: a word tokenised with
    and without them."""
    a = list(tok("hello world", add_special_tokens=True)["input_ids"])
    b = list(tok("hello world", add_special_tokens=False)["input_ids"])
    at = next((i for i in range(len(a) - len(b) + 1) if a[i:i + len(b)] == b), None)
    if at is None:
        return [], []
    return a[:at], a[at + len(b):]


def _encode(texts: list[str], tok: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One chunk of documents: (token ids, tokens per document, each token's word as an index
    into the chunk's sorted lowercase words or -1, those words). A word is a maximal run of
    ASCII letters, digits and apostrophes; a token belongs to the word of its last character."""
    enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
    n_tok = np.fromiter((len(x) for x in enc["input_ids"]), dtype=np.int64, count=len(texts))
    if n_tok.sum() == 0:
        return np.zeros(0, np.int64), n_tok, np.zeros(0, np.int64), np.zeros(0, dtype=object)
    ids = np.concatenate([np.asarray(x, dtype=np.int64) for x in enc["input_ids"] if len(x)])
    offs = np.concatenate([np.asarray(o, dtype=np.int64).reshape(-1, 2) for o in enc["offset_mapping"] if len(o)])
    del enc
    doc = np.repeat(np.arange(len(texts)), n_tok)
    base = np.concatenate([[0], np.cumsum([len(t) + 1 for t in texts])[:-1]])
    joined = "\n".join(texts)
    cp = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    isw = ((cp >= 48) & (cp <= 57)) | ((cp >= 65) & (cp <= 90)) | ((cp >= 97) & (cp <= 122)) | (cp == 39)
    starts = isw & ~np.concatenate([[False], isw[:-1]])
    wid = np.cumsum(starts) - 1
    found = re.findall(r"[A-Za-z0-9']+", joined)
    words, inv = np.unique(np.array([w.lower() for w in found], dtype=object), return_inverse=True)
    last = base[doc] + np.maximum(offs[:, 1] - 1, offs[:, 0])          # the token's last character
    last = np.clip(last, 0, len(cp) - 1)
    word = np.where(isw[last] & (offs[:, 1] > offs[:, 0]), inv[wid[last]] if len(inv) else -1, -1)
    return ids, n_tok, word, words


def cut(corpus: Corpus, tok: Any, *, length: int = 64, max_tokens: int | None = None,
        chunk: int = 1 << 19) -> Excerpts:
    """Excerpts of `length` tokens (special tokens included) from the corpus's token stream.
    Documents are tokenised about `chunk` characters at a time, each chunk's tokens kept as
    arrays only, and only until the excerpts asked for are filled: memory holds the excerpts,
    not the tokeniser's Python lists for the whole corpus."""
    pre, suf = _specials(tok)
    body = length - len(pre) - len(suf)
    if body < 2:
        raise ProbeError(f"excerpt length {length} leaves no room for text")
    sep = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    need = None if max_tokens is None else max(1, -(-max_tokens // length)) * body
    cat_names = sorted(set(corpus.categories)) if corpus.categories is not None else []
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    vocabs: list[np.ndarray] = []
    have = n_text = 0
    ends_at = np.cumsum(np.fromiter((len(t) + 1 for t in corpus.texts), dtype=np.int64, count=len(corpus.texts)))
    lo = 0
    while lo < len(corpus.texts):
        hi = max(lo + 1, int(np.searchsorted(ends_at, (ends_at[lo - 1] if lo else 0) + chunk, "right")))
        texts, lo0, lo = corpus.texts[lo:hi], lo, hi
        ids, n_tok, word, words = _encode(texts, tok)
        cat = (np.searchsorted(np.array(cat_names, dtype=object),
                               np.array(corpus.categories[lo0:hi], dtype=object))
               if cat_names else np.full(len(texts), -1))[np.repeat(np.arange(len(texts)), n_tok)]
        if sep is not None:                 # one stream, a separator after every document
            ends = np.cumsum(n_tok)
            ids, word, cat = np.insert(ids, ends, sep), np.insert(word, ends, -1), np.insert(cat, ends, -1)
        parts.append((ids, word, cat))
        vocabs.append(words)
        n_text += int(n_tok.sum())
        have += len(ids)
        if need is not None and have >= need:
            break
    if n_text == 0:
        raise ProbeError(f"corpus {corpus.name} has no tokens")
    vocab = np.unique(np.concatenate(vocabs))
    remap = [np.searchsorted(vocab, w) if len(w) else np.zeros(0, np.int64) for w in vocabs]
    ids = np.concatenate([p[0] for p in parts])
    word = np.concatenate([np.where(p[1] >= 0, r[np.maximum(p[1], 0)] if len(r) else -1, -1)
                           for p, r in zip(parts, remap)])
    cat = np.concatenate([p[2] for p in parts])
    del parts
    if need is not None:
        ids, word, cat = ids[:need], word[:need], cat[:need]
    n = len(ids)
    e = -(-n // body)
    lengths = np.full(e, length, dtype=np.int64)
    lengths[-1] = len(pre) + (n - (e - 1) * body) + len(suf)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (sep if sep is not None else 0)
    out = {k: np.full((e, length), v, dtype=np.int64) for k, v in (("ids", pad), ("word", -1), ("cat", -1))}
    pos = np.arange(n)
    row, col = pos // body, pos % body + len(pre)
    out["ids"][row, col] = ids
    out["word"][row, col] = word
    out["cat"][row, col] = cat
    if pre:
        out["ids"][:, :len(pre)] = pre
    if suf:
        sc = (lengths - len(suf))[:, None] + np.arange(len(suf))[None, :]
        out["ids"][np.arange(e)[:, None], sc] = np.array(suf)[None, :]
    h = hashlib.sha256(f"{corpus.sha}:{length}:{max_tokens}".encode()).hexdigest()[:16]
    return Excerpts(corpus.name, out["ids"], lengths, out["word"].astype(np.int32), vocab,
                    out["cat"].astype(np.int16), cat_names, h)
