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
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from neurolens.constants import ALPHA
from neurolens.engine.labels.evidence import (
    N_TOKENS, POLY_MIN_SEL, RELATED_R, Evidence, gather_evidence, model_concepts, polysemantic,
    related_concepts, run_sql, top_tokens,
)
from neurolens.engine.labels.families import FAMILY_CUT, PROFILE_WEIGHT, families
from neurolens.engine.labels.stats import (
    RIDGE, ConceptData, Simulation, _passes, concept_data, explanation_scores, group_profile,
    token_matrix,
)
from neurolens.engine.labels.text import LABEL_MAX_CONCEPTS, LABEL_MIN_SEL, _label_texts
from neurolens.engine.labels.tokens import TOP_EXAMPLES, TOP_NEURONS, top_examples
from neurolens.engine.runtime.progress import stage as progress_stage
from neurolens.probes.types import ProbeSet
from neurolens.store import SCHEMAS, Store, read_table

LABEL_VERSION = "1"
MAX_CLUSTER = 1500      # neurons clustered directly; the rest join the nearest family


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


__all__ = ["ALPHA", "FAMILY_CUT", "LABEL_MAX_CONCEPTS", "LABEL_MIN_SEL", "LABEL_VERSION", "MAX_CLUSTER",
           "N_TOKENS", "POLY_MIN_SEL", "PROFILE_WEIGHT", "RELATED_R", "RIDGE", "TOP_EXAMPLES", "TOP_NEURONS",
           "ConceptData", "Evidence", "Simulation", "build_labels", "concept_data", "explanation_scores",
           "families", "gather_evidence", "group_profile", "label_model", "model_concepts", "polysemantic",
           "related_concepts", "run_labels", "run_sql", "token_matrix", "top_examples", "top_tokens",
           "_label_texts", "_passes"]
