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


def range_counts(adapter: Adapter, ex: Excerpts, picks: dict[int, np.ndarray], lo: dict[int, np.ndarray],
                 hi: dict[int, np.ndarray], concept: np.ndarray, max_tokens: int, batch_size: int = 16
                 ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per layer, for the picked neurons: (tokens in range, concept tokens in range)."""
    n_ex = max(1, min(len(ex), int(np.searchsorted(np.cumsum(ex.lengths), max_tokens)) + 1))
    layers = sorted(picks)
    dev = adapter.device
    acc = {l: [torch.zeros(len(picks[l]), dtype=torch.int64, device=dev) for _ in range(2)] for l in layers}
    cols = {l: torch.from_numpy(picks[l]).to(dev) for l in layers}
    lo_t = {l: torch.from_numpy(lo[l]).float().to(dev) for l in layers}
    hi_t = {l: torch.from_numpy(hi[l]).float().to(dev) for l in layers}
    cur: dict = {}

    def count(layer: int, out: torch.Tensor) -> None:
        a = out.detach().float()[..., cols[layer]][cur["valid"]]          # [M, n]
        inr = (a >= lo_t[layer]) & (a <= hi_t[layer])
        acc[layer][0] += inr.sum(0)
        acc[layer][1] += (inr & cur["concept"].unsqueeze(1)).sum(0)

    with torch.inference_mode(), on_sites(adapter, layers, count, stop_after=layers[-1]):
        for s in range(0, n_ex, batch_size):
            idx = np.arange(s, min(s + batch_size, n_ex))
            b, valid = _batch(adapter, ex, idx)
            t = valid.shape[1]
            cur.update(valid=valid, concept=torch.from_numpy(concept[idx, :t]).to(dev)[valid])
            adapter.forward(b)
    return {l: (v[0].cpu().numpy(), v[1].cpu().numpy()) for l, v in acc.items()}


def corpus_evidence(store: Store, adapter: Adapter | None, ex: Excerpts | None, *, model: str,
                    corpus: str, concept: str, run_id: str, extra_words: Sequence[str] = (),
                    range_tokens: int = 100_000) -> pa.Table | None:
    """corpus_evidence rows for the ranked neurons of `concept` in the scanned layers; None when
    the concept has no ranked neuron there. Without a model (or excerpts) range_precision is null."""
    ranked = run_sql(store, "concept_ranked", model=model, concept=concept)
    words = concept_words(store, model, concept, extra_words)
    prec = run_sql(store, "corpus_precision", model=model, corpus=corpus, words=words)
    if not ranked.height or not prec.height:
        return None
    import polars as pl

    base = prec.group_by("layer").agg(pl.col("corpus_precision").mean().alias("base_precision"))
    rows = ranked.join(prec, on=["layer", "neuron"], how="inner").join(base, on="layer", how="left") \
        .sort("rank")
    if not rows.height:
        return None
    rp = np.full(rows.height, np.nan)
    rt = np.zeros(rows.height, dtype=np.int64)
    ok = rows["range_lo"].is_not_null() & rows["range_hi"].is_not_null()
    if adapter is not None and ex is not None and bool(ok.any()):
        cm = ex.concept_mask(words)
        lay = rows["layer"].to_numpy()
        sel = {int(l): np.flatnonzero((lay == l) & ok.to_numpy()) for l in np.unique(lay[ok.to_numpy()])}
        nrn, lo_, hi_ = (rows[c].to_numpy() for c in ("neuron", "range_lo", "range_hi"))
        got = range_counts(adapter, ex, {l: nrn[i].astype(np.int64) for l, i in sel.items()},
                           {l: lo_[i] for l, i in sel.items()}, {l: hi_[i] for l, i in sel.items()},
                           cm, range_tokens)
        for l, i in sel.items():
            n_in, n_hit = got[l]
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
