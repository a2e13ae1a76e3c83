"""`neurolens report [--model M] [--concept C] [--out DIR]`: one report, or the whole set."""
from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report",
        help="render self-contained HTML reports from the store",
        description="With --model and --concept, render that one report; otherwise render every "
                    "report in the store (narrowed by --model or --concept), the model comparisons "
                    "and the report set's index.html. Pages go to <out>/reports/.",
    )
    p.add_argument("--model", help="the model to report (default: every model in the store)")
    p.add_argument("--concept", help="the concept to report (default: every concept in the store)")
    p.add_argument("--out", default=None,
                   help="output folder holding store/ (default: $NEUROLENS_OUT or ./neurolens-out)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, *, stdout: TextIO | None = None) -> int:
    from neurolens.config import reports_dir, store_dir
    from neurolens.reporting import render_report, render_set

    out = stdout or sys.stdout
    store, reports = store_dir(args.out), reports_dir(args.out)
    model, concept = getattr(args, "model", None), getattr(args, "concept", None)
    if model and concept:
        path = render_report(store, model, concept, reports)
    else:
        path = render_set(store, reports, models=[model] if model else None,
                          concepts=[concept] if concept else None)
    print(path, file=out)
    return 0
