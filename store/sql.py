"""The one loader that every `.sql` file of the project goes through.

SQL lives next to the stage that owns it (queries/, reports/sql/, engine/labels/sql/);
each reads its files here, so they are read once, named the same way, and bound the same
way: `$name` parameters as DuckDB prepared-statement parameters, never pasted in.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def sql_files(folder: Path | str) -> list[str]:
    """The names (no `.sql`) of the SQL files in `folder`, sorted."""
    return sorted(p.stem for p in Path(folder).glob("*.sql"))


@functools.cache
def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def read_sql(folder: Path | str, name: str) -> str:
    """The text of `folder/name.sql` as written (headers included), read once."""
    return _read(Path(folder).resolve() / f"{name}.sql")


def statement(text: str) -> str:
    """One statement to run or to wrap in another: no trailing `;` or blank space."""
    return text.strip().rstrip(";").rstrip()


def used_params(sql: str) -> set[str]:
    """The `$name` parameters `sql` refers to."""
    return set(PARAM.findall(sql))


def bind(sql: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters `sql` uses, from `params`; KeyError naming any it lacks."""
    used = used_params(sql)
    missing = used - set(params)
    if missing:
        raise KeyError(f"query needs parameters {sorted(missing)}")
    return {k: v for k, v in params.items() if k in used}


def run_file(con: duckdb.DuckDBPyConnection, folder: Path | str, name: str,
             **params: Any) -> pl.DataFrame:
    """Run `folder/name.sql` on `con` with its `$name` parameters bound; a polars frame."""
    sql = statement(read_sql(folder, name))
    return con.sql(sql, params=bind(sql, params)).pl()
