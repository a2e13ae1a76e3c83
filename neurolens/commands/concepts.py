"""`neurolens concepts`: list the built-in concepts with their modality, counts and groups."""
from __future__ import annotations

import argparse
import json
import sys

from neurolens.probes import list_concepts


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("concepts", help="list built-in concepts",
                              description="List every built-in concept with its modality, counts and groups "
                                          "(train / test groups after the by-group split).")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="table (default) or one JSON array on stdout")
    p.set_defaults(func=run)


def _table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Built-in concepts")
    for col, kw in (("concept", {}), ("modality", {}), ("pos", {"justify": "right"}),
                    ("neg", {"justify": "right"}), ("groups", {}), ("description", {})):
        table.add_column(col, **kw)
    for r in rows:
        shown = ", ".join(r["groups"][:4]) + (", ..." if r["n_groups"] > 4 else "")
        counts = f"{r['n_groups']} ({r['n_train_groups']} train / {r['n_test_groups']} test)"
        table.add_row(r["name"], r["modality"], str(r["n_pos"]), str(r["n_neg"]),
                      f"{counts}: {shown}", r["description"])
    Console().print(table)


def run(args: argparse.Namespace) -> int:
    rows = [c.to_dict() for c in list_concepts()]
    if getattr(args, "format", "table") == "json":
        sys.stdout.write(json.dumps(rows) + "\n")
    else:
        _table(rows)
    return 0
