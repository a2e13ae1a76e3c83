"""Every code block of README.md and docs/*.md runs as a test or is marked as what it is.

Info strings: ``python`` blocks run (a page's blocks in order, in one namespace, in a fresh
folder that holds a small synthetic store at neurolens-out/store); ``sql`` blocks run on
that store; ``sh``/``bash`` blocks are commands: each `neurolens query` runs on that store,
every other `neurolens` command is parsed by the real CLI (flags, choices), each `make`
names a Makefile target; ``json``/``jsonl`` blocks parse; ``text`` blocks are output or
usage shown as is. A block without an info string fails. docs/python.md and the README's
Python script run in tests/test_docs_python.py (real MiniLM), not here.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report_fixtures import ModelSpec, build_store  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)
KINDS = {"python", "sql", "sh", "bash", "json", "jsonl", "text"}
#: programs a shell block may name besides neurolens and make
TOOLS = {"duckdb", "pip", "python", "apt-get", "git", "head", "accelerate", "torchrun", "cd", "export",
         "open", "xdg-open", "ls", "cat"}
#: pages whose python blocks run elsewhere (tests/test_docs_python.py)
PYTHON_ELSEWHERE = {"python.md", "README.md"}

pytestmark = pytest.mark.xdist_group("docs-blocks")


def blocks(page: Path) -> list[tuple[str, str, int]]:
    text = page.read_text(encoding="utf-8")
    return [(m.group(1).strip(), m.group(2), text[:m.start()].count("\n") + 1)
            for m in FENCE.finditer(text)]


def _where(page: Path, line: int) -> str:
    return f"{page.relative_to(ROOT)}:{line}"


def test_every_block_says_what_it_is():
    bad = [f"{_where(p, line)} ```{kind}" for p in PAGES for kind, _, line in blocks(p)
           if kind not in KINDS]
    assert not bad, f"label these blocks ({', '.join(sorted(KINDS))}): {bad}"


@pytest.fixture(scope="module")
def docs_dir(tmp_path_factory):
    """A folder holding neurolens-out/store: three text models × royalty and negation."""
    root = tmp_path_factory.mktemp("docs")
    models = [ModelSpec(m, 4, 32, concepts=["royalty", "negation"], top_examples=False)
              for m in ("gpt2", "bert-base-uncased", "roberta-base")]
    build_store(root / "neurolens-out" / "store", models, n_pos=16, n_neg=16)
    return root


def _commands(code: str) -> list[list[str]]:
    """Each command of a shell block as argv (continuations and lines inside quotes joined,
    `$ ` prompts and comments dropped)."""
    out, pending = [], ""
    for line in code.replace("\\\n", " ").splitlines():
        line = line if pending else line.strip().removeprefix("$ ")
        if not pending and (not line or line.startswith("#")):
            continue
        pending = f"{pending}\n{line}" if pending else line
        try:
            argv = shlex.split(pending, comments=True)
        except ValueError:              # an open quote: the command goes on
            continue
        cut = next((i for i, a in enumerate(argv) if a in (">", ">>", "|", "&&")), len(argv))
        out.append(argv[:cut])          # the command itself, not where its output goes
        pending = ""
    assert not pending, f"unclosed quote in {code!r}"
    return out


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, flags=re.M))


def _check_command(argv: list[str], where: str, docs_dir: Path, monkeypatch) -> None:
    from neurolens.cli import build_parser, main

    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):   # `VAR=value command`: the command
        argv = argv[1:]
    prog = argv[0]
    if prog == "make":
        targets = [a for a in argv[1:] if "=" not in a and not a.startswith("-")]
        assert targets and set(targets) <= _make_targets(), f"{where}: {argv}"
    elif prog == "neurolens":
        remote = any(a.startswith(("s3://", "gs://")) for a in argv)   # a store this test cannot reach
        if argv[1:2] == ["query"] and not remote:          # runs, on the synthetic store
            monkeypatch.chdir(docs_dir)
            with contextlib.redirect_stdout(io.StringIO()):
                rc = main(argv[1:])
            assert rc == 0, f"{where}: {argv} -> {rc}"
        else:
            try:
                build_parser().parse_args(argv[1:])
            except SystemExit as e:
                pytest.fail(f"{where}: `{' '.join(argv)}` does not parse ({e})")
    else:
        assert prog in TOOLS, f"{where}: unknown program {prog!r} in a shell block"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_shell_sql_and_data_blocks(page, docs_dir, monkeypatch):
    import duckdb
    from neurolens.queries import open_store, parse

    for kind, code, line in blocks(page):
        where = _where(page, line)
        if kind in ("sh", "bash"):
            for argv in _commands(code):
                _check_command(argv, where, docs_dir, monkeypatch)
        elif kind == "sql":
            if code.lstrip().startswith("-- description:"):     # a named query file
                q = parse(code, "doc_query")
                assert q.params and q.body, where
                duckdb.connect().extract_statements(q.body)
            else:
                con = open_store(docs_dir / "neurolens-out" / "store")
                con.sql(code.strip().rstrip(";")).fetchall()
        elif kind == "json":
            json.loads(code)
        elif kind == "jsonl":
            for row in code.splitlines():
                json.loads(row)


PY_PAGES = [p for p in PAGES if p.name not in PYTHON_ELSEWHERE
            and any(k == "python" for k, _, _ in blocks(p))]


@pytest.mark.slow
@pytest.mark.parametrize("page", PY_PAGES, ids=lambda p: p.name)
def test_python_blocks_run(page, docs_dir, monkeypatch):
    monkeypatch.chdir(docs_dir)
    ns: dict = {"__name__": "__docs__"}
    for kind, code, line in blocks(page):
        if kind == "python":
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(code, _where(page, line), "exec"), ns)  # noqa: S102
