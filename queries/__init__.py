"""Named DuckDB queries over the store, and the runner that binds their parameters.

    from neurolens import queries
    queries.sql("neurolens-out/store", "SELECT model, count(*) FROM scores GROUP BY ALL")
    queries.named("neurolens-out/store", "top_neurons", model="gpt2", concept="negation", k=10)
"""
from .runner import (
    QUERY_DIR, NamedQuery, Param, QueryError, bind, convert, execute, get, jsonable, list_queries,
    named, open_store, parse, parse_assignments, query_names, rows, sql, store_root,
)

__all__ = [
    "QUERY_DIR", "NamedQuery", "Param", "QueryError", "bind", "convert", "execute", "get",
    "jsonable", "list_queries", "named", "open_store", "parse", "parse_assignments",
    "query_names", "rows", "sql", "store_root",
]
