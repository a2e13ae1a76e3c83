"""Every `.sql` file of the project goes through one loader (store/sql.py)."""
from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest
from neurolens.store.sql import bind, read_sql, run_file, sql_files, statement

ROOT = Path(__file__).resolve().parents[1]
SQL_FOLDERS = [ROOT / "queries", ROOT / "reports" / "sql", ROOT / "engine" / "labels" / "sql"]


def test_bind_takes_what_the_sql_uses_and_names_what_it_lacks():
    sql = "select $a + $b as x"
    assert bind(sql, {"a": 1, "b": 2, "c": 3}) == {"a": 1, "b": 2}
    with pytest.raises(KeyError, match=r"\['b'\]"):
        bind(sql, {"a": 1})
    assert statement("  select 1;\n ") == "select 1"


def test_run_file_binds_parameters(tmp_path):
    (tmp_path / "twice.sql").write_text("-- description: doubles\nselect $x * 2 as y;\n")
    con = duckdb.connect()
    assert run_file(con, tmp_path, "twice", x=21, unused=0)["y"].to_list() == [42]
    assert sql_files(tmp_path) == ["twice"]


def test_every_sql_file_is_read_by_the_loader():
    names = {f: sql_files(f) for f in SQL_FOLDERS}
    assert all(names.values()), names
    for folder, files in names.items():
        for name in files:
            assert statement(read_sql(folder, name)), (folder, name)


def test_no_other_module_opens_sql_files():
    """Reading a .sql file anywhere but store/sql.py is a second loader."""
    opens = re.compile(r"""(\.sql["']|\*\.sql).*(read_text|open\(|glob)|(read_text|open\(|glob).*(\.sql["']|\*\.sql)""")
    found = []
    for sub in ("neurolens", "engine", "numerics", "probes", "store", "queries", "reports"):
        for py in (ROOT / sub).rglob("*.py"):
            if py == ROOT / "store" / "sql.py":
                continue
            for i, line in enumerate(py.read_text(encoding="utf-8").splitlines(), 1):
                if opens.search(line):
                    found.append(f"{py.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not found, found
