"""A DuckDB connection whose views carry the store's table names (DESIGN: "Store")."""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import duckdb
import pyarrow as pa

from neurolens.errors import first_line

from .layout import Store, StoreError
from .schema import PARTITIONS, SCHEMAS

T = TypeVar("T")

_DUCK_TYPES = {
    pa.string(): "VARCHAR", pa.int8(): "TINYINT", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
    pa.float32(): "FLOAT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN",
}


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
        return _duck_type(t.value_type) + "[]"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ"
    if pa.types.is_float16(t):
        return "FLOAT"
    return _DUCK_TYPES[t]


def _empty_select(table: str) -> str:
    """A typed, empty relation, so queries over a fresh store work and return no rows."""
    if table == "activations":
        cols = [("example_id", "INTEGER"), ("acts", "FLOAT[]"), ("run_id", "VARCHAR")]
    else:
        cols = [(f.name, _duck_type(f.type)) for f in SCHEMAS[table]]
    cols += [(k, "INTEGER" if k == "layer" else "VARCHAR") for k in PARTITIONS[table]]
    inner = ", ".join(f"CAST(NULL AS {t}) AS {n}" for n, t in cols)
    return f"SELECT {inner} WHERE false"


def view_sql(store: Store, table: str) -> str:
    """The CREATE VIEW statement for one table: a glob over its partitions."""
    root = store.table_dir(table)
    if not any(root.glob("**/*.parquet")) if root.exists() else True:
        body = _empty_select(table)
    else:
        glob = (root / "**" / "*.parquet").as_posix().replace("'", "''")
        hive = "true" if PARTITIONS[table] else "false"
        types = ", hive_types={'layer': INTEGER}" if "layer" in PARTITIONS[table] else ""
        body = (f"SELECT * FROM read_parquet('{glob}', hive_partitioning={hive}{types}, "
                f"union_by_name=true)")
    return f"CREATE OR REPLACE VIEW {table} AS {body};"


def views_sql(store: Store) -> str:
    """Every view, as a script a bare `duckdb` shell can run (`duckdb -init views.sql`)."""
    return "\n".join(view_sql(store, t) for t in PARTITIONS) + "\n"


def tables_in(sql: str) -> list[str]:
    """The store's tables that `sql` may read: every table whose name occurs in it as a word.
    A superset of what it reads (a column named like a table counts too), never less."""
    return [t for t in PARTITIONS if re.search(rf"\b{t}\b", sql, re.IGNORECASE)]


def connect(store: Store | str | Path, *, threads: int | None = None,
            tables: Iterable[str] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB over the store; the Parquet files stay the only truth.

    `tables` limits the views to those a statement reads (see `tables_in`): on a Delta
    store each view opens its table's log, which on object storage is a few round trips
    per table, so a query that reads two tables should not pay for eleven."""
    if not isinstance(store, Store):
        store = Store(store)
    con = duckdb.connect(":memory:")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    delta = hasattr(store, "dataset")
    wanted = [t for t in PARTITIONS if t in set(PARTITIONS if tables is None else tables)]
    datasets = _datasets(store, wanted) if delta else {}
    for t in wanted:
        try:
            if delta:   # the Delta log's live files as an Arrow dataset, scanned where they are
                ds = datasets[t]
                if isinstance(ds, BaseException):
                    raise ds
                if ds is None:
                    con.execute(f"CREATE OR REPLACE VIEW {t} AS {_empty_select(t)};")
                else:
                    con.register(f"_delta_{t}", ds)
                    con.execute(f"CREATE OR REPLACE VIEW {t} AS SELECT * FROM _delta_{t};")
                continue
            retrying(lambda t=t: con.execute(view_sql(store, t)))
        except duckdb.Error as e:
            raise StoreError(f"the store's {t} table cannot be read ({_first_line(e)})") from None
    return con


_first_line = first_line
VANISHED_RETRIES = 20   # a partition replaced while it is read: its old files are gone, glob again


def vanished(e: BaseException | None) -> bool:
    """True when DuckDB failed because a file it listed was removed before it was opened:
    a concurrent writer replaced that partition (rename in, old folder deleted). Reading
    again sees the new files, so this is a retry, not an error."""
    msg = str(e)
    return isinstance(e, duckdb.IOException) and any(
        m in msg for m in ("No such file", "Cannot open file", "No files found"))


def retrying(read: Callable[[], T]) -> T:
    """Run `read` again when a file it listed vanished under a concurrent writer: the reader
    then sees the partition as the writer left it. A view over the local store reads every
    footer when it is created (union_by_name), so a replaced partition shows up there too."""
    for attempt in range(VANISHED_RETRIES - 1):
        try:
            return read()
        except Exception as e:
            if not (vanished(e) or vanished(e.__cause__)):
                raise
        time.sleep(0.005 * (1 + attempt))
    return read()


def _datasets(store: Store, tables: list[str]) -> dict[str, object]:
    """Each table's Arrow dataset (or the error opening it raised), the tables brought up to
    date at once: on object storage each is a listing of its log, a round trip apiece."""
    if getattr(store, "remote", False):
        present = _try(store.tables_present)
        if isinstance(present, BaseException):
            return dict.fromkeys(tables, present)
        absent = {t: None for t in tables if t not in present}
        tables = [t for t in tables if t in present]
    else:
        absent = {}
    if len(tables) < 2 or not getattr(store, "remote", False):
        return {**absent, **{t: _try(store.dataset, t) for t in tables}}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, len(tables))) as pool:
        return {**absent, **dict(zip(tables, pool.map(lambda t: _try(store.dataset, t), tables)))}


def _try(f, *args) -> object:
    try:
        return f(*args)
    except Exception as e:  # noqa: BLE001 - raised again in the caller's thread
        return e


def write_views(store: Store | str | Path) -> Path | None:
    """Write `<store>/views.sql`, the views as a script for a bare `duckdb` shell
    (`duckdb -init <store>/views.sql`). Replaced atomically; returns None (and writes
    nothing) when the store is read-only or missing."""
    import os
    import uuid

    if not isinstance(store, Store):
        store = Store(store)
    if not store.root.is_dir() or hasattr(store, "dataset"):
        return None   # a Delta store's views are Arrow datasets, not a script
    final = store.root / "views.sql"
    tmp = store.root / f".views.sql.{uuid.uuid4().hex}.tmp"
    try:
        tmp.write_text(views_sql(store))
        os.replace(tmp, final)
    except OSError:
        tmp.unlink(missing_ok=True)
        return None
    return final
