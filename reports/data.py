"""What a report reads from the store: named SQL files under `reports/sql/`, run on DuckDB.

Every heavy step (histograms, per-group consistency, sampling, binning) is SQL; Python
only shapes the small results for templates and charts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from neurolens.constants import ALPHA, SPECIFICITY_MIN  # noqa: F401 - one home for the thresholds
from neurolens.errors import ReportError  # noqa: F401 - re-exported: its home is neurolens.errors
from neurolens.store.sql import bind, read_sql, run_file, statement


SQL_DIR = Path(__file__).resolve().parent / "sql"


def query(con: duckdb.DuckDBPyConnection, name: str, **params: Any) -> pl.DataFrame:
    """Run the named SQL file with its `$name` parameters filled; a polars frame."""
    params.setdefault("alpha", ALPHA)
    return run_file(con, SQL_DIR, name, **params)


def stage_neuron_values(con: duckdb.DuckDBPyConnection, model: str, concept: str,
                        neurons: list[tuple[int, int]]) -> None:
    """Materialise the selected neurons' activation columns once as `neuron_values`,
    which the histogram, group and fallback-example queries then read."""
    sql = statement(read_sql(SQL_DIR, "neuron_values"))
    params = {"model": model, "concept": concept,
              "layers": [int(layer) for layer, _ in neurons],
              "neurons": [int(n) for _, n in neurons]}
    con.sql(f"CREATE OR REPLACE TEMP TABLE neuron_values AS {sql}", params=bind(sql, params))


def connect(store_root: str | Path) -> duckdb.DuckDBPyConnection:
    from neurolens.store import Store, StoreError
    from neurolens.store import connect as store_connect

    try:
        store = Store(store_root)
        if not store.exists():
            raise ReportError(f"no store at {store.uri}: run `neurolens run` or `neurolens sweep` first")
        return store_connect(store)
    except StoreError as e:
        raise ReportError(str(e)) from None


@dataclass(frozen=True)
class Entry:
    model: str
    concept: str
    n_scored: int
    n_layers: int
    modality: str
    lexical_control: bool = False


def catalog(con: duckdb.DuckDBPyConnection) -> list[Entry]:
    df = query(con, "catalog")
    return [Entry(r["model"], r["concept"], int(r["n_scored"]), int(r["n_layers"] or 0),
                  r["modality"], bool(r["lexical_control"])) for r in df.iter_rows(named=True)]


def check(entries: list[Entry], model: str | None, concept: str | None) -> None:
    """One clear line when the store lacks the model or the concept asked for."""
    if not entries:
        raise ReportError("the store has no scores yet: run `neurolens run` or `neurolens sweep` first")
    models = sorted({e.model for e in entries})
    if model is not None and model not in models:
        raise ReportError(f"model {model!r} has no scores in the store (it has: {', '.join(models)})")
    pool = [e for e in entries if model is None or e.model == model]
    concepts = sorted({e.concept for e in pool})
    if concept is not None and concept not in concepts:
        where = f" for model {model!r}" if model else ""
        raise ReportError(f"concept {concept!r} has no scores in the store{where} "
                          f"(it has: {', '.join(concepts)})")


def has_rows(con: duckdb.DuckDBPyConnection, table: str, **where: str) -> bool:
    cond = " AND ".join(f"{k} = ${k}" for k in where) or "true"
    return bool(con.sql(f"SELECT EXISTS (SELECT 1 FROM {table} WHERE {cond})", params=where).fetchall()[0][0])
