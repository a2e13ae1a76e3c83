"""`neurolens query "SQL" | --name NAME [--param k=v ...] [--format table|csv|json] [--out DIR]`."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

import polars as pl

from neurolens.queries import (
    QueryError, bind, execute, get, list_queries, open_store, parse_assignments, rows, store_root,
)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "query",
        help="run SQL or a named query over the store",
        description="Run SQL over the store's views (runs, examples, activations, scores, ablations, "
                    "labels, top_examples) or a named query (--name; see --list).",
    )
    p.add_argument("sql", nargs="?", help="SQL to run over the views")
    p.add_argument("--name", help="a named query (see --list)")
    p.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="a parameter of the named query (repeatable)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="output format (default: table)")
    p.add_argument("--out", help="output folder holding store/ (default: $NEUROLENS_OUT or ./neurolens-out)")
    p.add_argument("--list", action="store_true", help="list the named queries and their parameters")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, *, stdout: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    fmt = getattr(args, "format", None) or "table"
    if getattr(args, "list", False):
        _print_list(fmt, out)
        return 0
    text, name = getattr(args, "sql", None), getattr(args, "name", None)
    params = parse_assignments(getattr(args, "param", None))
    if text and name:
        raise QueryError("give either SQL or --name, not both")
    if not text and not name:
        raise QueryError('give SQL to run, or --name NAME (see `neurolens query --list`)')
    if text and params:
        raise QueryError("--param goes with --name; in SQL, write the values in the query")
    if name:
        query = get(name)
        bound = bind(query, params)
        sql_text, what = query.body, f"query {name}"
    else:
        sql_text, bound, what = text, None, "SQL"
    con = open_store(store_root(getattr(args, "out", None)), for_sql=sql_text)
    try:
        df = execute(con, sql_text, bound, what=what)
    finally:
        con.close()
    emit(df, fmt, out)
    return 0


def emit(df: pl.DataFrame, fmt: str, out: TextIO) -> None:
    if fmt == "json":
        out.write(json.dumps(rows(df), allow_nan=False, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        out.write(_flat(df).write_csv())
    else:
        _table(df, out)


def _flat(df: pl.DataFrame) -> pl.DataFrame:
    """Nested cells (lists, structs) as JSON text, so CSV can hold them."""
    nested = [c for c, t in df.schema.items() if t.is_nested()]
    if not nested:
        return df
    return df.with_columns(
        pl.Series(c, [None if v is None else json.dumps(_json(v)) for v in df[c].to_list()],
                  dtype=pl.String)
        for c in nested
    )


def _json(v: Any) -> Any:
    from neurolens.queries import jsonable

    return jsonable(v)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(_json(v))
    return str(v)


def _table(df: pl.DataFrame, out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(show_lines=False, header_style="bold")
    for c, dtype in df.schema.items():
        t.add_column(c, justify="right" if dtype.is_numeric() else "left", overflow="fold")
    for r in df.iter_rows():
        t.add_row(*(_cell(v) for v in r))
    probe = Console(file=out)
    # on a terminal, fit its width; into a pipe or file, never fold a column
    console = Console(file=out, width=probe.width if probe.is_terminal else 100_000, soft_wrap=False)
    console.print(t)
    console.print(f"{df.height} row{'s' if df.height != 1 else ''}", style="dim")


def _print_list(fmt: str, out: TextIO) -> None:
    qs = list_queries()
    data = [{"name": q.name, "description": q.description,
             "params": [{"name": p.name, "type": p.type, "required": p.required,
                         "default": None if p.required else p.default} for p in q.params]}
            for q in qs]
    if fmt == "json":
        out.write(json.dumps(data) + "\n")
        return
    df = pl.DataFrame({
        "name": [q.name for q in qs],
        "parameters": [", ".join(p.describe() for p in q.params) for q in qs],
        "description": [q.description for q in qs],
    })
    if fmt == "csv":
        out.write(df.write_csv())
    else:
        _table(df, out)
