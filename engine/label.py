"""Labels, concept families and explanation scores, built from the evidence in the store.

Two outputs (DESIGN: "Store"):

* `top_examples` (per model × concept): for the best-ranked neurons, the examples with the
  highest pooled activation (read from the stored activations) and, from one extra forward
  pass over just those examples, their token-level activations.
* `labels` (per model): one row per neuron that is significant (q < 0.05) and positively
  selective for at least one concept of the model. The label names the concepts with their
  selectivity, the tokens the neuron fires on (from `top_examples`), and the groups of its
  main concept it is weak on, e.g. ``royalty (S=0.91, fires on king, queen; weak on monarch)``.
  `polysemantic` marks neurons selective for two unrelated concepts. `family` is the
  neuron's concept family (hierarchical clustering of selectivity profiles and activation
  correlations). `explanation_score` is a simulation score: the label alone predicts every
  held-out (test split) example's activation, and the score is the Pearson correlation of
  that prediction with the true pooled activation.

Everything over all neurons is numpy/scipy on whole arrays; loops run over concepts,
layers, label tokens or the few neurons that have top examples.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from neurolens.engine.stages import stage as progress_stage
from neurolens.probes.types import ProbeSet
from neurolens.store import SCHEMAS, Store, StoreError, layers_stored, read_layer, read_table

LABEL_VERSION = "1"
ALPHA = 0.05            # significance for "the neuron is selective for this concept"
TOP_NEURONS = 50        # neurons per model × concept that get top examples
TOP_EXAMPLES = 8        # top activating examples per neuron
N_TOKENS = 5            # tokens named in a label
POLY_MIN_SEL = 0.4      # selectivity needed on each of two concepts to call a neuron polysemantic
RELATED_R = 0.7         # concepts whose selectivities correlate this much over neurons are related
MAX_CLUSTER = 1500      # neurons clustered directly; the rest join the nearest family
FAMILY_CUT = 0.2        # average-linkage distance at which the family tree is cut
PROFILE_WEIGHT = 0.6    # family distance = w · profile distance + (1 − w) · activation distance
RIDGE = 1e-3
LABEL_MIN_SEL = 0.3     # further concepts are named in the label text from this selectivity
LABEL_MAX_CONCEPTS = 3  # (all significant concepts are listed in `concepts`)
_WORD = re.compile(r"\w+|[^\w\s]")

Tick = Callable[[int], None]


# -- top examples ------------------------------------------------------------------------------
def top_examples(adapter, probes: ProbeSet, store: Store, *, run_id: str,
                 n_neurons: int = TOP_NEURONS, n_examples: int = TOP_EXAMPLES,
                 batch_size: int = 32, progress: Tick | None = None) -> pa.Table:
    """The top activating examples of this model × concept's best-ranked neurons, with
    token-level activations from one forward pass over just those examples."""
    model, concept = adapter.name, probes.concept
    sc = read_table(store, "scores", {"model": model, "concept": concept})
    rank = sc.column("rank").to_numpy(zero_copy_only=False).astype(float)
    ok = np.flatnonzero(~np.isnan(rank))
    ok = ok[np.argsort(rank[ok], kind="stable")][:n_neurons]
    layer_of = sc.column("layer").to_numpy()[ok].astype(np.int64)
    neuron_of = sc.column("neuron").to_numpy()[ok].astype(np.int64)
    schema = SCHEMAS["top_examples"]
    if ok.size == 0:
        return schema.empty_table()

    index_of = {e.example_id: i for i, e in enumerate(probes.examples)}
    picks: list[tuple[int, int, int, float]] = []   # (layer, neuron, example row, pooled act)
    for l in np.unique(layer_of):
        ids, acts = read_layer(store, model, concept, int(l))
        cols = neuron_of[layer_of == l]
        a = acts[:, cols].astype(np.float32)                      # [n_ex, k]
        m = min(n_examples, a.shape[0])
        top = np.argsort(-a, axis=0, kind="stable")[:m]           # [m, k]
        for j, n in enumerate(cols):
            for r in top[:, j]:
                picks.append((int(l), int(n), index_of[int(ids[r])], float(a[r, j])))

    rows = sorted({p[2] for p in picks})
    sub = [probes.examples[i] for i in rows]
    pos_in_sub = {r: i for i, r in enumerate(rows)}
    want = {int(l): np.unique(neuron_of[layer_of == l]) for l in np.unique(layer_of)}
    tokens, traces = _token_traces(adapter, sub, want, batch_size, progress)

    out = {f.name: [] for f in schema}
    for l, n, r, act in picks:
        i = pos_in_sub[r]
        col = int(np.searchsorted(want[l], n))
        out["layer"].append(l)
        out["neuron"].append(n)
        out["example_id"].append(probes.examples[r].example_id)
        out["activation"].append(act)
        out["tokens"].append(tokens[i])
        out["token_acts"].append(traces[l][i][:, col].tolist())
        out["run_id"].append(run_id)
    return pa.Table.from_pydict(out, schema=schema)


@torch.inference_mode()
def _token_traces(adapter, examples, want: dict[int, np.ndarray], batch_size: int,
                  progress: Tick | None):
    """tokens[i] and traces[layer][i] ([T_i, k_layer] float32) for each example: the
    activations of the wanted neurons at every real token (text), or on a coarse ≤4×4
    spatial grid flattened (vision, no tokens)."""
    layers = sorted(want)
    n = len(examples)
    tokens: list[list[str]] = [[] for _ in range(n)]
    traces: dict[int, list[np.ndarray]] = {l: [np.zeros((0, 0), np.float32)] * n for l in layers}
    sel = {l: torch.as_tensor(want[l], dtype=torch.long) for l in layers}
    state: dict = {}
    vision = adapter.modality == "vision"

    def grab(layer: int, out: torch.Tensor) -> None:
        b = state["batch"]
        if vision:
            x = out[:, sel[layer].to(out.device)].float()                        # [B, k, H, W]
            x = torch.nn.functional.adaptive_avg_pool2d(x, (min(4, x.shape[2]), min(4, x.shape[3])))
            x = x.flatten(2).transpose(1, 2).cpu().numpy()                        # [B, cells, k]
            for r, i in enumerate(b.index.tolist()):
                traces[layer][i] = x[r]
            return
        x = out[..., sel[layer].to(out.device)].float().cpu().numpy()             # [B, T, k]
        mask = b.mask.bool().cpu().numpy() if b.mask is not None else np.ones(x.shape[:2], bool)
        for r, i in enumerate(b.index.tolist()):
            traces[layer][i] = x[r][mask[r]]

    from neurolens.engine.hooks import on_sites

    with on_sites(adapter, layers, grab, stop_after=layers[-1]):
        for b in adapter.batches(examples, batch_size):
            if not vision:
                ids = b.inputs["input_ids"]
                mask = b.mask.bool() if b.mask is not None else torch.ones_like(ids, dtype=torch.bool)
                for r, i in enumerate(b.index.tolist()):
                    tokens[i] = adapter.processor.convert_ids_to_tokens(ids[r][mask[r]].tolist())
            b = b.to(adapter.device)
            state["batch"] = b
            adapter.forward(b)
            if progress:
                progress(1)
    return tokens, traces


# -- the label stage -----------------------------------------------------------------------------
def run_labels(adapter, probes: ProbeSet, store: Store, *, top_k: int = 10, run_id: str, key: str,
               batch_size: int = 32, bars=None, n_examples: int = TOP_EXAMPLES,
               relabel: bool = True) -> pa.Table | None:
    """Write `top_examples` for this model × concept (skipped when already there for the same
    scores), then recompute `labels` for the whole model from every concept in the store
    (a sweep passes relabel=False and calls `label_model` once per model at the end)."""
    n_neurons = max(int(top_k), TOP_NEURONS)
    parts = {"model": adapter.name, "concept": probes.concept}
    tkey = f"t{LABEL_VERSION}:{n_neurons}:{n_examples}:{key}"
    n_batches = -(-min(len(probes.examples), n_neurons * n_examples) // max(1, batch_size))
    stage = progress_stage(bars, "label", n_batches + 1)
    with stage as tick:
        if not store.is_complete("top_examples", parts, tkey):
            tab = top_examples(adapter, probes, store, run_id=run_id, n_neurons=n_neurons,
                               n_examples=n_examples, batch_size=batch_size, progress=tick)
            store.write_partition("top_examples", parts, tab, key=tkey, run_id=run_id)
        out = label_model(store, adapter.name, run_id=run_id) if relabel else None
        tick(1)
    return out



def model_concepts(store: Store, model: str) -> list[str]:
    """Concepts with a complete scores partition for `model`."""
    d = store.table_dir("scores") / f"model={model}"
    if not d.is_dir():
        return []
    return sorted(p.name.split("=", 1)[1] for p in d.glob("concept=*")
                  if store.marker("scores", {"model": model, "concept": p.name.split("=", 1)[1]}))


def _labels_key(store: Store, model: str, concepts: Sequence[str]) -> str:
    h = hashlib.sha256(f"l{LABEL_VERSION}".encode())
    for c in concepts:
        for t in ("scores", "top_examples", "examples"):
            m = store.marker(t, {"model": model, "concept": c}) or {}
            h.update(f"{c}:{t}:{m.get('key')}:{m.get('run_id') if t == 'top_examples' else ''}\n".encode())
    return h.hexdigest()[:16]


def label_model(store: Store, model: str, *, run_id: str, alpha: float = ALPHA,
                force: bool = False) -> pa.Table | None:
    """(Re)compute and publish the `labels` partition of `model` from every concept stored
    for it; skipped when nothing it depends on changed. Returns the labels (None when the
    model has no significant neuron)."""
    concepts = model_concepts(store, model)
    if not concepts:
        return None
    key = _labels_key(store, model, concepts)
    if not force and store.is_complete("labels", {"model": model}, key):
        return read_table(store, "labels", {"model": model})
    table = build_labels(store, model, concepts, run_id=run_id, alpha=alpha)
    if table is None:
        return None
    store.write_partition("labels", {"model": model}, table, key=key, run_id=run_id,
                          extra={"n_labels": table.num_rows, "concepts": list(concepts)})
    return table


# -- building labels -----------------------------------------------------------------------------
@dataclass
class Evidence:
    """What labels are made of, for the n labelled neurons of one model (row j = neuron j)."""

    layer: np.ndarray            # [n]
    neuron: np.ndarray           # [n]
    concepts: list[str]          # [c]
    sel: np.ndarray              # [n, c] selectivity where significant and > 0, else 0
    sig: np.ndarray              # [n, c] bool: q < alpha and selectivity > 0
    tokens: list[list[str]]      # [n] top tokens (empty when the neuron has no top examples)
    with_tokens: np.ndarray      # indices of the neurons that have top tokens


def _q(store: Store, name: str, **params):
    from neurolens.queries.runner import named

    return named(store.root, name, **params)


def gather_evidence(store: Store, model: str, concepts: Sequence[str], alpha: float = ALPHA
                    ) -> Evidence | None:
    import polars as pl

    sig = _q(store, "label_significant", model=model, alpha=alpha)
    sig = sig.filter(pl.col("concept").is_in(list(concepts)))
    if sig.height == 0:
        return None
    concepts = sorted(concepts)
    cidx = {c: i for i, c in enumerate(concepts)}
    layer = sig["layer"].to_numpy().astype(np.int64)
    neuron = sig["neuron"].to_numpy().astype(np.int64)
    uid = layer << 32 | neuron
    uniq, row = np.unique(uid, return_inverse=True)
    col = np.array([cidx[c] for c in sig["concept"].to_list()], dtype=np.int64)
    S = np.zeros((uniq.size, len(concepts)))
    S[row, col] = sig["selectivity"].to_numpy()
    tok = _q(store, "label_top_tokens", model=model, n_tokens=N_TOKENS)
    tokens = np.empty(uniq.size, dtype=object)
    tokens[:] = [()] * uniq.size
    with_tokens = np.zeros(0, dtype=np.int64)
    if tok.height:
        tu = tok["layer"].to_numpy().astype(np.int64) << 32 | tok["neuron"].to_numpy().astype(np.int64)
        at = np.searchsorted(uniq, tu)
        found = (at < uniq.size) & (uniq[np.minimum(at, uniq.size - 1)] == tu)
        with_tokens = at[found]
        lists = np.empty(int(found.sum()), dtype=object)
        lists[:] = [list(t or []) for t in tok.filter(pl.Series(found))["top_tokens"].to_list()]
        tokens[with_tokens] = lists
    return Evidence(uniq >> 32, uniq & 0xFFFFFFFF, concepts, S, S > 0,
                    [list(t) for t in tokens], with_tokens)


def related_concepts(store: Store, model: str, concepts: Sequence[str]) -> np.ndarray:
    """[c, c] bool: concepts whose selectivities correlate ≥ RELATED_R over the model's neurons."""
    idx = {c: i for i, c in enumerate(concepts)}
    R = np.eye(len(concepts), dtype=bool)
    corr = _q(store, "label_concept_corr", model=model)
    for a, b, r in zip(corr["concept_a"].to_list(), corr["concept_b"].to_list(), corr["r"].to_list()):
        if a in idx and b in idx and r is not None and r >= RELATED_R:
            R[idx[a], idx[b]] = R[idx[b], idx[a]] = True
    return R


def polysemantic(ev: Evidence, related: np.ndarray) -> np.ndarray:
    """[n] bool: selective (≥ POLY_MIN_SEL) for at least two concepts that are not related."""
    M = (ev.sig & (ev.sel >= POLY_MIN_SEL)).astype(np.float64)
    U = (~related).astype(np.float64)
    return np.einsum("nc,cd,nd->n", M, U, M) > 0


# -- per-concept passes over the stored activations ------------------------------------------------
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


# -- families ----------------------------------------------------------------------------------------
def families(ev: Evidence, corr: np.ndarray | None, members: np.ndarray) -> np.ndarray:
    """[n] family names. `members` are the neurons clustered directly (rows of `corr`);
    the others join the family whose mean selectivity profile is nearest (cosine)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist, squareform

    P = ev.sel / np.maximum(np.linalg.norm(ev.sel, axis=1, keepdims=True), 1e-12)
    Pm = P[members]
    if members.size == 1:
        lab = np.array([1])
    else:
        d = np.clip(pdist(Pm, "cosine"), 0.0, 1.0)
        if corr is not None:
            dact = squareform(np.clip((1.0 - corr) / 2.0, 0.0, 1.0), checks=False)
            d = PROFILE_WEIGHT * d + (1.0 - PROFILE_WEIGHT) * dact
        lab = fcluster(linkage(d, "average"), t=FAMILY_CUT, criterion="distance")
    k = int(lab.max())
    onehot = np.zeros((members.size, k))
    onehot[np.arange(members.size), lab - 1] = 1.0
    centre = (onehot.T @ ev.sel[members]) / onehot.sum(0)[:, None]               # [k, c]
    cn = centre / np.maximum(np.linalg.norm(centre, axis=1, keepdims=True), 1e-12)
    cluster = np.argmax(P @ cn.T, axis=1)                                         # everyone: nearest centre
    cluster[members] = lab - 1
    names = np.array([_family_name(centre[i], ev.concepts) for i in range(k)], dtype=object)
    return names[cluster]


def _family_name(profile: np.ndarray, concepts: Sequence[str]) -> str:
    order = np.argsort(-profile, kind="stable")
    top = profile[order[0]]
    keep = [concepts[i] for i in order[:2] if profile[i] > 0 and profile[i] >= 0.5 * top]
    return "+".join(keep) if keep else "unlabelled"


# -- the labels table ------------------------------------------------------------------------------
def build_labels(store: Store, model: str, concepts: Sequence[str], *, run_id: str,
                 alpha: float = ALPHA) -> pa.Table | None:
    ev = gather_evidence(store, model, concepts, alpha)
    if ev is None:
        return None
    primary = np.argmax(ev.sel, axis=1)
    members = np.sort(np.argsort(-ev.sel.max(1), kind="stable")[:MAX_CLUSTER])
    expl, strong, weak, corr = _passes(store, model, ev, primary=primary, members=members)
    fam = families(ev, corr, members)
    poly = polysemantic(ev, related_concepts(store, model, ev.concepts))
    n = ev.layer.size
    labels, concept_lists = _label_texts(ev, primary, strong, weak)
    schema = SCHEMAS["labels"]
    return pa.Table.from_pydict({
        "layer": ev.layer.astype(np.int32), "neuron": ev.neuron.astype(np.int32),
        "family": fam.tolist(), "label": labels, "top_tokens": ev.tokens,
        "concepts": concept_lists, "polysemantic": poly, "explanation_score": expl,
        "run_id": [run_id] * n,
    }, schema=schema)


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


def _label_texts(ev: Evidence, primary: np.ndarray, strong: np.ndarray,
                 weak: np.ndarray) -> tuple[list[str], list[list[str]]]:
    """`royalty (S=0.91, fires on king, queen; weak on monarch) + animals (S=0.62)`."""
    import polars as pl

    order = np.argsort(-ev.sel, axis=1, kind="stable")
    cnames = np.array(ev.concepts, dtype=object)
    ranked = cnames[order]                                                        # [n, c]
    svals = np.take_along_axis(ev.sel, order, axis=1)
    keep = svals > 0
    rank = np.arange(svals.shape[1])[None, :]
    named = keep & ((rank == 0) | (svals >= LABEL_MIN_SEL)) & (rank < LABEL_MAX_CONCEPTS)
    df = pl.DataFrame({
        "j": np.repeat(np.arange(ev.sel.shape[0]), ev.sel.shape[1])[keep.ravel()],
        "concept": ranked.ravel()[keep.ravel()].astype(str),
        "s": svals.ravel()[keep.ravel()],
        "named": named.ravel()[keep.ravel()],
    }).with_columns(part=pl.format("{} (S={})", "concept", pl.col("s").round(2).cast(pl.String)))
    agg = df.group_by("j", maintain_order=True).agg(pl.col("concept"),
                                                    pl.col("part").filter(pl.col("named")))
    agg = agg.sort("j")
    cols = {f"{name}{i}": pl.Series(a[:, i].tolist(), dtype=pl.String)
            for name, a in (("s", strong), ("w", weak)) for i in range(a.shape[1])}
    lists = lambda name, a: pl.concat_list([f"{name}{i}" for i in range(a.shape[1])]  # noqa: E731
                                           ).list.drop_nulls()
    text = pl.DataFrame({"first": agg["part"].list.first(), "rest": agg["part"].list.slice(1),
                         "tokens": pl.Series(ev.tokens, dtype=pl.List(pl.String)), **cols})
    text = text.with_columns(strong=lists("s", strong), weak=lists("w", weak)).with_columns(
        fires=pl.when(pl.col("tokens").list.len() > 0).then("tokens").otherwise("strong"))
    text = text.with_columns(
        head=pl.col("first").str.replace(r"\)$", ""),
        f=pl.when(pl.col("fires").list.len() > 0)
          .then(pl.lit(", fires on ") + pl.col("fires").list.join(", ")).otherwise(pl.lit("")),
        w=pl.when(pl.col("weak").list.len() > 0)
          .then(pl.lit("; weak on ") + pl.col("weak").list.join(", ")).otherwise(pl.lit("")),
        r=pl.when(pl.col("rest").list.len() > 0)
          .then(pl.lit(" + ") + pl.col("rest").list.join(" + ")).otherwise(pl.lit("")),
    ).with_columns(label=pl.concat_str("head", "f", "w", pl.lit(")"), "r"))
    return text["label"].to_list(), agg["concept"].to_list()


__all__ = ["run_labels", "label_model", "top_examples", "build_labels", "model_concepts",
           "explanation_scores", "Evidence", "gather_evidence",
           "LABEL_VERSION"]
