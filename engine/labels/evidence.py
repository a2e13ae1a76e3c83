"""The evidence labels are built from: significant neurons, their top tokens, related concepts.

Read with the SQL next to this module (engine/labels/sql/label_*.sql), run on the store's own
DuckDB connection: the engine does not go through the user-facing named queries.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from neurolens.constants import ALPHA
from neurolens.errors import first_line
from neurolens.probes.text import CONTROL
from neurolens.store import Store, StoreError
from neurolens.store.duck import connect, retrying
from neurolens.store.sql import run_file

SQL_DIR = Path(__file__).resolve().parent / "sql"
N_TOKENS = 5            # tokens named in a label
TOKEN_NEAR = 0.9        # a token within this share of an example's peak counts as a peak too
POLY_MIN_SEL = 0.4      # selectivity needed on each of two concepts to call a neuron polysemantic
RELATED_R = 0.7         # concepts whose selectivities correlate this much over neurons are related


def run_sql(store: Store, name: str, **params) -> pl.DataFrame:
    """Run engine/labels/sql/<name>.sql over the store's views with `$name` parameters bound."""
    def read() -> pl.DataFrame:
        con = connect(store)
        try:
            return run_file(con, SQL_DIR, name, **params)
        finally:
            con.close()

    try:
        return retrying(read)
    except duckdb.Error as e:
        raise StoreError(f"labels: reading the store failed ({first_line(e)})") from None


def model_concepts(store: Store, model: str) -> list[str]:
    """Concepts with a complete scores partition for `model`; a concept's lexical control
    (`<concept>+control`) is not one: a neuron it lights up answers to a word swap."""
    return sorted(p["concept"] for p in store.partitions("scores", model=model)
                  if not p["concept"].endswith(CONTROL))


def top_tokens(store: Store, model: str, n_tokens: int = N_TOKENS, near: float = TOKEN_NEAR) -> pl.DataFrame:
    """(layer, neuron, top_tokens): the words each neuron of `model` peaks on in its top examples."""
    return run_sql(store, "label_top_tokens", model=model, n_tokens=n_tokens, near=near)


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


def gather_evidence(store: Store, model: str, concepts: Sequence[str], alpha: float = ALPHA
                    ) -> Evidence | None:
    concepts = sorted(c for c in concepts if not c.endswith(CONTROL))
    sig = run_sql(store, "label_significant", model=model, alpha=alpha)
    sig = sig.filter(pl.col("concept").is_in(concepts))
    if sig.height == 0:
        return None
    cidx = {c: i for i, c in enumerate(concepts)}
    layer = sig["layer"].to_numpy().astype(np.int64)
    neuron = sig["neuron"].to_numpy().astype(np.int64)
    uid = layer << 32 | neuron
    uniq, row = np.unique(uid, return_inverse=True)
    col = np.array([cidx[c] for c in sig["concept"].to_list()], dtype=np.int64)
    S = np.zeros((uniq.size, len(concepts)))
    S[row, col] = sig["selectivity"].to_numpy()
    tok = top_tokens(store, model)
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
    corr = run_sql(store, "label_concept_corr", model=model)
    for a, b, r in zip(corr["concept_a"].to_list(), corr["concept_b"].to_list(), corr["r"].to_list()):
        if a in idx and b in idx and r is not None and r >= RELATED_R:
            R[idx[a], idx[b]] = R[idx[b], idx[a]] = True
    return R


def polysemantic(ev: Evidence, related: np.ndarray) -> np.ndarray:
    """[n] bool: selective (≥ POLY_MIN_SEL) for at least two concepts that are not related."""
    M = (ev.sig & (ev.sel >= POLY_MIN_SEL)).astype(np.float64)
    U = (~related).astype(np.float64)
    return np.einsum("nc,cd,nd->n", M, U, M) > 0
