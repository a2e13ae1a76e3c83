"""Run SQL and named `.sql` queries over the store's DuckDB views; results are polars frames.

A named query is a `.sql` file in this folder that starts with a header of comments:

    -- description: what it returns
    -- param: model VARCHAR                 (required)
    -- param: k INTEGER = 20                (optional, with a default)
    -- param: concept VARCHAR = NULL        (optional, NULL when left out)
    -- same-as: compare_models              (optional: reuse another query's body)

Parameters are bound as DuckDB prepared-statement parameters (`$model`), never
pasted into the SQL text.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from neurolens.constants import NAMED
from neurolens.errors import QueryError, first_line  # noqa: F401 - re-exported: its home is neurolens.errors
from neurolens.store.duck import connect as _connect
from neurolens.store.duck import retrying, tables_in, vanished
from neurolens.store.duck import write_views
from neurolens.store.layout import Store, StoreError
from neurolens.store.sql import read_sql, sql_files

QUERY_DIR = Path(__file__).resolve().parent

_TYPES = ("VARCHAR", "INTEGER", "BIGINT", "DOUBLE", "BOOLEAN")
_TYPE_ALIASES = {"TEXT": "VARCHAR", "STRING": "VARCHAR", "INT": "INTEGER", "FLOAT": "DOUBLE",
                 "BOOL": "BOOLEAN"}
_HEADER = re.compile(r"^--\s*([A-Za-z_-]+)\s*:\s*(.*?)\s*$")
_PARAM = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s+([A-Za-z]+)\s*(?:=\s*(.*?))?\s*$")
_REF = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REQUIRED = object()


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: Any = _REQUIRED

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def describe(self) -> str:
        if self.required:
            return f"{self.name} {self.type}"
        d = "NULL" if self.default is None else repr(self.default) if isinstance(self.default, str) \
            else str(self.default)
        return f"{self.name} {self.type} = {d}"


@dataclass(frozen=True)
class NamedQuery:
    name: str
    description: str
    params: tuple[Param, ...]
    body: str
    path: Path

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def signature(self) -> str:
        return f"{self.name}({', '.join(p.describe() for p in self.params)})"


# -- values ----------------------------------------------------------------------------------
def convert(value: Any, typ: str, *, what: str = "value") -> Any:
    """A parameter value (a `k=v` string from the command line, or a Python value) as `typ`."""
    if value is None:
        return None
    try:
        if typ == "VARCHAR":
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                return str(value)
        elif typ in ("INTEGER", "BIGINT"):
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int):
                v = value
            elif isinstance(value, float) and value.is_integer():
                v = int(value)
            elif isinstance(value, str):
                v = int(value.strip())
            else:
                raise ValueError
            limit = 2**31 if typ == "INTEGER" else 2**63
            if not -limit <= v < limit:
                raise ValueError
            return v
        elif typ == "DOUBLE":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, (int, float)):
                return float(value)
            if isinstance(value, str):
                return float(value.strip())
        elif typ == "BOOLEAN":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
                return False
    except ValueError:
        pass
    raise QueryError(f"{what} {value!r} is not a valid {typ}")


def _parse_default(text: str, typ: str, where: str) -> Any:
    if text.upper() == "NULL":
        return None
    if text in NAMED:   # `= ALPHA`: the project's constant, defined once in neurolens.constants
        return convert(NAMED[text], typ, what=f"{where}: default")
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    return convert(text, typ, what=f"{where}: default")


# -- named queries ---------------------------------------------------------------------------
def parse(text: str, name: str, path: Path | None = None) -> NamedQuery:
    """Parse one named query's header; the body is everything after it."""
    where = f"query {name}"
    lines = text.splitlines()
    description, params, same_as, i = "", [], None, 0
    while i < len(lines):
        line = lines[i].strip()
        if not line:
            i += 1
            continue
        if not line.startswith("--"):
            break
        m = _HEADER.match(line)
        if m:
            key, val = m.group(1).lower(), m.group(2)
            if key == "description":
                description = val
            elif key == "param":
                pm = _PARAM.match(val)
                if not pm:
                    raise QueryError(f"{where}: bad parameter declaration {val!r}")
                pname, ptype, pdefault = pm.group(1), pm.group(2).upper(), pm.group(3)
                ptype = _TYPE_ALIASES.get(ptype, ptype)
                if ptype not in _TYPES:
                    raise QueryError(f"{where}: parameter {pname} has unsupported type {ptype}")
                if any(p.name == pname for p in params):
                    raise QueryError(f"{where}: parameter {pname} declared twice")
                default = _REQUIRED if pdefault is None else _parse_default(pdefault, ptype, where)
                params.append(Param(pname, ptype, default))
            elif key == "same-as":
                same_as = val
        i += 1
    body = "\n".join(lines[i:]).strip().rstrip(";").strip()
    if same_as:
        if body:
            raise QueryError(f"{where}: a query with 'same-as' has no body of its own")
        body = _load(same_as).body
    if not body:
        raise QueryError(f"{where}: the file has no SQL")
    declared = {p.name for p in params}
    used = set(_REF.findall(_strip_comments(body)))
    if used - declared:
        raise QueryError(f"{where}: uses undeclared parameter(s) {', '.join(sorted(used - declared))}")
    if declared - used:
        raise QueryError(f"{where}: declares unused parameter(s) {', '.join(sorted(declared - used))}")
    return NamedQuery(name, description, tuple(params), body, path or QUERY_DIR / f"{name}.sql")


def _strip_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


@lru_cache(maxsize=None)
def _load(name: str) -> NamedQuery:
    path = QUERY_DIR / f"{name}.sql"
    if not _NAME.match(name) or not path.is_file():
        known = ", ".join(q for q in query_names())
        raise QueryError(f"unknown query {name!r} (known: {known})")
    return parse(read_sql(QUERY_DIR, name), name, path)


def query_names() -> list[str]:
    return sql_files(QUERY_DIR)


def get(name: str) -> NamedQuery:
    """The named query `name` (its description, parameters and SQL)."""
    return _load(name)


def list_queries() -> list[NamedQuery]:
    """Every named query, by name."""
    return [_load(n) for n in query_names()]


def bind(query: NamedQuery, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check and convert the given parameters against the query's declarations."""
    unknown = [k for k in params if query.param(k) is None]
    if unknown:
        allowed = ", ".join(p.name for p in query.params) or "none"
        raise QueryError(f"query {query.name} has no parameter {unknown[0]!r} (parameters: {allowed})")
    out: dict[str, Any] = {}
    for p in query.params:
        if p.name in params:
            out[p.name] = convert(params[p.name], p.type, what=f"parameter {p.name}:")
        elif p.required:
            raise QueryError(f"query {query.name} needs parameter {p.name} ({p.type})")
        else:
            out[p.name] = p.default
    return out


def parse_assignments(items: list[str] | tuple[str, ...] | None) -> dict[str, str]:
    """`["k=20", "model=gpt2"]` → `{"k": "20", "model": "gpt2"}` (command-line `--param`)."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, val = item.partition("=")
        key = key.strip()
        if not sep or not _NAME.match(key):
            raise QueryError(f"--param wants NAME=VALUE, got {item!r}")
        if key in out:
            raise QueryError(f"parameter {key} given twice")
        out[key] = val
    return out


# -- running ---------------------------------------------------------------------------------
def store_root(out: str | os.PathLike[str] | None = None) -> Path | str:
    """`<out>/store`: out is `out`, else $NEUROLENS_OUT, else ./neurolens-out."""
    from neurolens.store.paths import store_dir

    return store_dir(out)


def open_store(root: str | os.PathLike[str] | Store, *, threads: int | None = None,
               for_sql: str | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the store's views; also (re)writes `<store>/views.sql`.
    With `for_sql`, only the views that statement may read (`tables_in`)."""
    store = root if isinstance(root, Store) else Store(root)
    try:
        if not store.exists():
            raise QueryError(f"no store at {store.uri} (run `neurolens run` first, or pass --out DIR)")
        con = _connect(store, threads=threads, tables=None if for_sql is None else tables_in(for_sql))
    except StoreError as e:
        raise QueryError(str(e)) from None
    # later queries on the same connection reuse the Parquet footers read for the first
    con.execute("SET parquet_metadata_cache = true")
    write_views(store)
    return con


_one_line = first_line


def execute(con: duckdb.DuckDBPyConnection, sql_text: str, params: Mapping[str, Any] | None = None,
            *, what: str = "query") -> pl.DataFrame:
    """Run `sql_text` on an open connection with named parameters; a polars frame back."""
    if not sql_text or not sql_text.strip():
        raise QueryError("empty SQL")
    try:
        rel = con.sql(sql_text, params=dict(params)) if params else con.sql(sql_text)
        if rel is None:
            return pl.DataFrame()
        return rel.pl()
    except duckdb.Error as e:   # a vanished file stays the cause, so `retrying` reads again
        raise QueryError(f"{what} failed: {_one_line(e)}") from (e if vanished(e) else None)
    except (pl.exceptions.PolarsError, ArithmeticError, TypeError) as e:
        raise QueryError(f"{what}: the result cannot be read ({_one_line(e)})") from None


def sql(root: str | os.PathLike[str] | Store, query: str,
        params: Mapping[str, Any] | None = None) -> pl.DataFrame:
    """Run SQL over the store's views (`runs`, `scores`, ...) and return a polars frame.
    `params` binds `$name` placeholders."""
    def read() -> pl.DataFrame:
        con = open_store(root, for_sql=query)
        try:
            return execute(con, query, params, what="SQL")
        finally:
            con.close()

    return retrying(read)


def named(root: str | os.PathLike[str] | Store, name: str, **params: Any) -> pl.DataFrame:
    """Run the named query `name` with typed parameters (strings are converted to the
    declared types) and return a polars frame."""
    query = get(name)
    bound = bind(query, params)
    def read() -> pl.DataFrame:
        con = open_store(root, for_sql=query.body)
        try:
            return execute(con, query.body, bound, what=f"query {name}")
        finally:
            con.close()

    return retrying(read)


# -- JSON-safe rows ----------------------------------------------------------------------------
def jsonable(value: Any) -> Any:
    """A value as JSON can hold it: NaN/inf → None, timestamps → ISO strings, lists kept."""
    import datetime as _dt
    import decimal

    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy / polars series inside a cell
        return jsonable(value.tolist())
    return str(value)


def rows(df: pl.DataFrame) -> list[dict[str, Any]]:
    """The frame as a list of JSON-serialisable row objects."""
    return [{k: jsonable(v) for k, v in r.items()} for r in df.iter_rows(named=True)]
