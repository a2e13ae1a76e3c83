"""Concept evidence on natural text (`corpus_evidence`): does a ranked neuron's top corpus
excerpt peak on the concept's words, more often than the neurons of its layer do?

* corpus_precision: share of the neuron's top-k excerpts whose maximum is on a concept word;
* base_precision: the mean corpus_precision of every neuron of the same layer (the exact
  expectation for a random neuron of that layer, not a sample);
* range_precision: of the corpus tokens whose activation lies in the concept's probe range
  [range_lo, range_hi], the share that are concept words (a pass over the first
  `range_tokens` tokens, reading the ranked neurons only);
* n_categories: distinct corpus categories (WordNet lexicographer files) of those maxima.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from neurolens.engine.labels.evidence import run_sql
from neurolens.engine.models.adapters.base import Adapter
from neurolens.engine.runtime.hooks import on_sites
from neurolens.engine.runtime.scan import _batch
from neurolens.probes.corpora import Excerpts
from neurolens.store import SCHEMAS, Store


def concept_words(store: Store, model: str, concept: str, extra: Sequence[str] = ()) -> list[str]:
    """The positives' marked words; without spans, words of positives that no negative has."""
    ex = run_sql(store, "concept_positives", model=model, concept=concept)
    words: set[str] = {w.lower() for w in extra}
    pos = ex.filter(ex["label"] == 1)
    spans = pos.drop_nulls(["span_start", "span_end"])
    for t, a, b in zip(spans["text"], spans["span_start"], spans["span_end"]):
        words.update(w.lower() for w in re.findall(r"[A-Za-z0-9']+", t[a:b]))
    if not spans.height:
        tok = lambda s: {w.lower() for t in s for w in re.findall(r"[A-Za-z0-9']+", t or "")}  # noqa: E731
        words |= tok(pos["text"]) - tok(ex.filter(ex["label"] == 0)["text"])
    return sorted(words)


class RangeSpec:
    """One concept's range question: per layer the picked neurons and their [lo, hi], and the
    [E, L] mask of the corpus tokens that are the concept's words."""

    def __init__(self, picks: dict[int, np.ndarray], lo: dict[int, np.ndarray], hi: dict[int, np.ndarray],
                 concept: np.ndarray):
        self.picks, self.lo, self.hi, self.concept = picks, lo, hi, concept


def range_counts_many(adapter: Adapter, ex: Excerpts, specs: Sequence[RangeSpec], max_tokens: int,
                      batch_size: int = 16) -> list[dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Per concept, per layer, for its picked neurons: (tokens in range, concept tokens in
    range), for every concept in one forward pass over the first `max_tokens` tokens: each
    layer's picked columns of every concept side by side, each column compared with its own
    range and counted against its own concept's mask."""
    n_ex = max(1, min(len(ex), int(np.searchsorted(np.cumsum(ex.lengths), max_tokens)) + 1))
    layers = sorted({l for sp in specs for l in sp.picks})
    out: list[dict[int, tuple[np.ndarray, np.ndarray]]] = [{} for _ in specs]
    if not layers:
        return out
    dev = adapter.device
    cols, lo_t, hi_t, owner, bounds = {}, {}, {}, {}, {}
    for l in layers:
        have = [(j, sp) for j, sp in enumerate(specs) if l in sp.picks]
        cols[l] = torch.from_numpy(np.concatenate([sp.picks[l] for _, sp in have]).astype(np.int64)).to(dev)
        lo_t[l] = torch.from_numpy(np.concatenate([sp.lo[l] for _, sp in have]).astype(np.float32)).to(dev)
        hi_t[l] = torch.from_numpy(np.concatenate([sp.hi[l] for _, sp in have]).astype(np.float32)).to(dev)
        owner[l] = torch.from_numpy(np.concatenate([np.full(len(sp.picks[l]), j) for j, sp in have])).to(dev)
        ends = np.cumsum([len(sp.picks[l]) for _, sp in have])
        bounds[l] = [(j, e - len(sp.picks[l]), e) for (j, sp), e in zip(have, ends)]
    acc = {l: [torch.zeros(len(cols[l]), dtype=torch.int64, device=dev) for _ in range(2)] for l in layers}
    masks = np.stack([sp.concept[:n_ex] for sp in specs], axis=-1)          # [E, L, C]
    cur: dict = {}

    def count(layer: int, act: torch.Tensor) -> None:
        a = act.detach().float()[..., cols[layer]][cur["valid"]]          # [M, n]
        inr = (a >= lo_t[layer]) & (a <= hi_t[layer])
        acc[layer][0] += inr.sum(0)
        acc[layer][1] += (inr & cur["concept"][:, owner[layer]]).sum(0)

    with torch.inference_mode(), on_sites(adapter, layers, count, stop_after=layers[-1]):
        for s in range(0, n_ex, batch_size):
            idx = np.arange(s, min(s + batch_size, n_ex))
            b, valid = _batch(adapter, ex, idx)
            t = valid.shape[1]
            cur.update(valid=valid, concept=torch.from_numpy(masks[idx, :t]).to(dev)[valid])   # [M, C]
            adapter.forward(b)
    for l in layers:
        n_in, n_hit = (v.cpu().numpy() for v in acc[l])
        for j, a, e in bounds[l]:
            out[j][l] = (n_in[a:e], n_hit[a:e])
    return out


def evidence_rows(store: Store, *, model: str, corpus: str, concept: str, extra_words: Sequence[str] = ()):
    """(rows, words) of `concept`'s ranked neurons in the scanned layers, with their corpus
    precision, layer base and probe range; None when there are none."""
    ranked = run_sql(store, "concept_ranked", model=model, concept=concept)
    words = concept_words(store, model, concept, extra_words)
    prec = run_sql(store, "corpus_precision", model=model, corpus=corpus, words=words)
    if not ranked.height or not prec.height:
        return None
    import polars as pl

    base = prec.group_by("layer").agg(pl.col("corpus_precision").mean().alias("base_precision"))
    rows = ranked.join(prec, on=["layer", "neuron"], how="inner").join(base, on="layer", how="left") \
        .sort("rank")
    return (rows, words) if rows.height else None


def range_spec(rows, ex: Excerpts, words: Sequence[str]) -> tuple[RangeSpec, dict[int, np.ndarray]]:
    """The range question of one concept's rows, and per layer which rows it answers."""
    ok = (rows["range_lo"].is_not_null() & rows["range_hi"].is_not_null()).to_numpy()
    lay = rows["layer"].to_numpy()
    sel = {int(l): np.flatnonzero((lay == l) & ok) for l in np.unique(lay[ok])}
    nrn, lo_, hi_ = (rows[c].to_numpy() for c in ("neuron", "range_lo", "range_hi"))
    spec = RangeSpec({l: nrn[i].astype(np.int64) for l, i in sel.items()}, {l: lo_[i] for l, i in sel.items()},
                     {l: hi_[i] for l, i in sel.items()}, ex.concept_mask(words))
    return spec, sel


def evidence_table(rows, sel: dict[int, np.ndarray] | None, counts: dict | None, run_id: str) -> pa.Table:
    """corpus_evidence rows from `evidence_rows`, with range precision where counted."""
    rp = np.full(rows.height, np.nan)
    rt = np.zeros(rows.height, dtype=np.int64)
    for l, i in (sel or {}).items():
        n_in, n_hit = counts[l]
        rt[i] = n_in
        rp[i] = np.where(n_in > 0, n_hit / np.maximum(n_in, 1), np.nan)
    n = rows.height
    return pa.table({
        "layer": pa.array(rows["layer"].to_numpy().astype(np.int32)),
        "neuron": pa.array(rows["neuron"].to_numpy().astype(np.int32)),
        "rank": pa.array(rows["rank"].to_numpy().astype(np.int32)),
        "corpus_precision": pa.array(rows["corpus_precision"].to_numpy()),
        "base_precision": pa.array(rows["base_precision"].to_numpy()),
        "range_precision": pa.array(rp, from_pandas=True), "range_tokens": pa.array(rt),
        "n_categories": pa.array(rows["n_categories"].to_numpy().astype(np.int32)),
        "categories": pa.array(rows["categories"].to_list(), pa.list_(pa.string())),
        "run_id": pa.array([run_id] * n, pa.string()),
    }, schema=SCHEMAS["corpus_evidence"])

