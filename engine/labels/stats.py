"""Statistics of labels over the stored activations: group profiles, token matches and the
explanation (simulation) score, in one pass over every concept of a model.

Everything over all neurons is numpy/scipy on whole arrays; loops run over concepts, layers,
label tokens or the few neurons that have top examples.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from neurolens.engine.labels.evidence import Evidence
from neurolens.store import Store, StoreError, layers_stored, read_layer, read_table

RIDGE = 1e-3
_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass
class ConceptData:
    concept: str
    label: np.ndarray      # [e] 1 concept / 0 not
    test: np.ndarray       # [e] bool
    group: np.ndarray      # [e] group index into groups
    groups: list[str]
    words: list[set[str]]  # [e] the example's lower-cased words and punctuation
    acts: np.ndarray       # [e, n] float32 activations of the labelled neurons (0 where missing)
    valid: np.ndarray      # [n] bool: the neuron's layer was extracted for this concept


def concept_data(store: Store, model: str, concept: str, ev: Evidence,
                 columns: np.ndarray | None = None) -> ConceptData | None:
    """Activations of the labelled neurons (or `columns` of them) on one concept's examples."""
    try:
        ex = read_table(store, "examples", {"model": model, "concept": concept})
    except StoreError:
        return None
    ex = ex.sort_by("example_id")
    ids = ex.column("example_id").to_numpy().astype(np.int64)
    cols = np.arange(ev.layer.size) if columns is None else columns
    acts = np.zeros((ids.size, cols.size), np.float32)
    valid = np.zeros(cols.size, bool)
    have = set(layers_stored(store, model, concept))
    lay = ev.layer[cols]
    for l in np.unique(lay):
        if int(l) not in have:
            continue
        aid, a = read_layer(store, model, concept, int(l))
        at = np.searchsorted(aid, ids)
        if aid.size != ids.size or not np.array_equal(aid[np.minimum(at, aid.size - 1)], ids):
            continue
        sel = np.flatnonzero(lay == l)
        acts[:, sel] = a[at][:, ev.neuron[cols][sel]].astype(np.float32)
        valid[sel] = True
    texts = ex.column("text").to_pylist()
    grp = ex.column("grp").to_pylist()
    groups = sorted(set(grp))
    gi = {g: i for i, g in enumerate(groups)}
    return ConceptData(
        concept, ex.column("label").to_numpy().astype(np.int64),
        np.array([s == "test" for s in ex.column("split").to_pylist()]),
        np.array([gi[g] for g in grp], dtype=np.int64), groups,
        [set(_WORD.findall((t or "").lower())) for t in texts], acts, valid)


def group_profile(cd: ConceptData) -> tuple[np.ndarray, np.ndarray]:
    """Per group of the concept's positives: (share of examples above the 95th percentile of
    the negatives [g, n], mean activation [g, n])."""
    pos, neg = cd.label == 1, cd.label == 0
    G = np.zeros((len(cd.groups), int(pos.sum())))
    G[cd.group[pos], np.arange(G.shape[1])] = 1.0
    cnt = np.maximum(G.sum(1, keepdims=True), 1.0)
    ap = cd.acts[pos]
    thr = np.quantile(cd.acts[neg], 0.95, axis=0) if neg.any() else np.full(ap.shape[1], np.inf)
    return (G @ (ap > thr)) / cnt, (G @ ap) / cnt


def token_matrix(words: list[set[str]], tokens: list[list[str]]):
    """[e, n] bool: example e contains one of neuron n's label tokens. A word piece `##x`
    matches any longer word ending in x; any other token matches the whole word."""
    from scipy import sparse

    vocab = sorted(set().union(*words)) if words else []
    vi = {w: i for i, w in enumerate(vocab)}
    r = np.repeat(np.arange(len(words)), [len(ws) for ws in words])
    c = [vi[w] for ws in words for w in ws]
    W = sparse.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(words), len(vocab)))
    varr = np.array(vocab, dtype=object)
    match: dict[str, np.ndarray] = {}
    tr, tc = [], []
    for j, toks in enumerate(tokens):
        for t in toks:
            if t not in match:
                if t.startswith("##") and len(t) > 2:
                    s = t[2:]
                    match[t] = np.flatnonzero([len(v) > len(s) and v.endswith(s) for v in varr])
                else:
                    match[t] = np.array([vi[t]] if t in vi else [], dtype=np.int64)
            tr.extend(match[t].tolist())
            tc.extend([j] * match[t].size)
    T = sparse.csr_matrix((np.ones(len(tr)), (tr, tc)), shape=(len(vocab), len(tokens)))
    return np.asarray((W @ T).todense()) > 0


class Simulation:
    """Sufficient statistics for the explanation score, accumulated concept by concept.

    Features of example e for neuron n, from the label alone: f_tok = the example contains
    one of the label's tokens; f_con = the example is a positive of one of the label's
    concepts. A least-squares fit of activation ~ 1 + f_tok + f_con on the train split
    (non-negative weights: a label only says where a neuron fires) gives the simulated
    activation; the score is its Pearson correlation with the true activation on the test
    split. Only sums are kept, so the examples of all concepts never sit in memory at once.
    """

    KEYS = ("n", "t", "c", "tc", "y", "ty", "cy", "yy")

    def __init__(self, n: int):
        self.s = {split: {k: np.zeros(n) for k in self.KEYS} for split in ("train", "test")}

    def add(self, ft: np.ndarray, fc: np.ndarray, y: np.ndarray, test: np.ndarray,
            valid: np.ndarray) -> None:
        """ft, fc: [e, n] bool features; y: [e, n] activations; test: [e]; valid: [n]."""
        v = valid.astype(np.float64)
        for split, rows in (("train", ~test), ("test", test)):
            t, c = ft[rows].astype(np.float32), fc[rows].astype(np.float32)
            yr = y[rows].astype(np.float32)
            acc = self.s[split]
            acc["n"] += rows.sum() * v
            acc["t"] += t.sum(0) * v
            acc["c"] += c.sum(0) * v
            acc["tc"] += (t * c).sum(0) * v
            acc["y"] += yr.sum(0, dtype=np.float64) * v
            acc["ty"] += (t * yr).sum(0, dtype=np.float64) * v
            acc["cy"] += (c * yr).sum(0, dtype=np.float64) * v
            acc["yy"] += (yr * yr).sum(0, dtype=np.float64) * v

    @staticmethod
    def _moments(a: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(n, feature covariance [n, 2, 2], feature-activation covariance [n, 2], var y)."""
        n = np.maximum(a["n"], 1.0)
        mt, mc, my = a["t"] / n, a["c"] / n, a["y"] / n
        cxx = np.empty((n.size, 2, 2))
        cxx[:, 0, 0] = mt - mt * mt
        cxx[:, 1, 1] = mc - mc * mc
        cxx[:, 0, 1] = cxx[:, 1, 0] = a["tc"] / n - mt * mc
        cxy = np.stack([a["ty"] / n - mt * my, a["cy"] / n - mc * my], axis=1)
        return a["n"], cxx, cxy, a["yy"] / n - my * my

    def scores(self) -> np.ndarray:
        _, cxx, cxy, _ = self._moments(self.s["train"])
        w = np.linalg.solve(cxx + RIDGE * np.eye(2)[None], cxy[..., None])[..., 0]
        w = np.maximum(w, 0.0)                       # a label only says where a neuron fires
        n, cxx, cxy, var_y = self._moments(self.s["test"])
        var_p = np.einsum("ni,nij,nj->n", w, cxx, w)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.einsum("ni,ni->n", w, cxy) / np.sqrt(var_p * var_y)
        r = np.where(var_p <= 1e-12, 0.0, r)        # a label that predicts no variation explains nothing
        r = np.where((n < 3) | ~(var_y > 1e-12), np.nan, r)
        return np.clip(r, -1.0, 1.0)


def explanation_scores(store: Store, model: str, ev: Evidence) -> np.ndarray:
    """[n] the explanation score of each label in `ev` for its neuron (see `Simulation`).
    Any (neuron, label) pairs can be scored, e.g. a label against the wrong neuron."""
    return _passes(store, model, ev)[0]


def _passes(store: Store, model: str, ev: Evidence, *, primary: np.ndarray | None = None,
            members: np.ndarray | None = None):
    """One pass over every concept's stored activations: explanation scores; with `primary`,
    the strongest and weakest groups of each neuron's main concept; with `members`, the
    activation correlation of those neurons over all examples (None where not every layer
    was extracted for every concept)."""
    n = ev.layer.size
    sim = Simulation(n)
    weak = np.full((n, 2), None, dtype=object)      # weakest groups of the main concept
    strong = np.full((n, 3), None, dtype=object)    # strongest groups (named when no tokens)
    m = 0 if members is None else members.size
    s1, s2 = np.zeros(m), np.zeros((m, m))
    n_rows, corr_ok = 0, True
    tok_lists = [ev.tokens[j] for j in ev.with_tokens]
    for ci, concept in enumerate(ev.concepts):
        cd = concept_data(store, model, concept, ev)
        if cd is None:
            corr_ok = False
            continue
        fc = (cd.label[:, None] == 1) & ev.sig[None, :, ci]
        ft = np.zeros_like(fc)
        if ev.with_tokens.size:
            ft[:, ev.with_tokens] = token_matrix(cd.words, tok_lists)
        sim.add(ft, fc, cd.acts, cd.test, cd.valid)
        if primary is not None:     # group profile of the neurons whose main concept this is
            mine = np.flatnonzero((primary == ci) & cd.valid & ev.sig[:, ci])
            if mine.size and (cd.label == 1).any() and (cd.label == 0).any():
                share, mean = group_profile(ConceptData(**{**cd.__dict__, "acts": cd.acts[:, mine]}))
                garr = np.array(cd.groups, dtype=object)
                lo = np.argsort(share, axis=0, kind="stable")[:2]                 # [<=2, k]
                is_weak = np.take_along_axis(share, lo, 0) < 0.5 * share.mean(0)[None]
                weak[mine[:, None], np.arange(lo.shape[0])[None]] = np.where(is_weak, garr[lo], None).T
                hi = np.argsort(-mean, axis=0, kind="stable")[:3]
                strong[mine[:, None], np.arange(hi.shape[0])[None]] = garr[hi].T
        if m:                       # activation correlation of the clustered neurons
            if cd.valid[members].all():
                a = cd.acts[:, members].astype(np.float64)
                s1 += a.sum(0)
                s2 += a.T @ a
                n_rows += a.shape[0]
            else:
                corr_ok = False
    corr = None
    if m > 1 and corr_ok and n_rows > 2:
        mu = s1 / n_rows
        cov = s2 / n_rows - np.outer(mu, mu)
        sd = np.sqrt(np.maximum(np.diag(cov), 1e-12))
        corr = np.nan_to_num(cov / np.outer(sd, sd), nan=0.0)
        np.fill_diagonal(corr, 1.0)
    return sim.scores(), strong, weak, corr
