"""`neurolens sweep`: many models × concepts, resumable, past failures, with a report set.

Every pair goes through the same pipeline as `neurolens run`, whose stages skip the
partitions already in the store, so running the same sweep again (after a crash, a
`kill -9`, a full disk) only does what is missing. A model that cannot be loaded, or a
pair that fails, is recorded and the sweep goes on; the summary says what ran, what was
skipped and why, and the exit status is 1 when anything failed.
"""
from __future__ import annotations

import argparse
import sys

from neurolens.sweeps import Outcome
from neurolens.commands.run import add_common
from neurolens.commands.run import config as _config
from neurolens.errors import NeuroLensError, first_line

#: a sweep validates what it finds unless told --no-ablate
ABLATE_DEFAULT = True
#: the two models that load offline: an encoder and a decoder
DEFAULT_MODELS = "minilm,smollm2"


def config(args: argparse.Namespace, model: str, concept: str | None):
    return _config(args, model, concept, ablate=ABLATE_DEFAULT)


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run every model × concept pair (resumable)",
                       description="Run every model × concept pair through the pipeline. Pairs "
                                   "already in the store are skipped, so an interrupted sweep "
                                   "resumes when run again; a model that fails to load is "
                                   "reported and the sweep goes on (exit status 1).")
    p.add_argument("--models", default=DEFAULT_MODELS,
                   help="all, or a comma-separated list of names or checkpoint folders "
                        f"(default {DEFAULT_MODELS}: the embedded encoder and decoder)")
    p.add_argument("--concepts", default="all",
                   help="all, or a comma-separated list of built-in concepts (default all)")
    p.add_argument("--executor", default="inprocess", choices=("inprocess", "ray"),
                   help="where the pairs run: this process (default), or a Ray cluster, one actor "
                        "per model (see docs/distributed.md)")
    p.add_argument("--address", default=None,
                   help="with --executor ray: the cluster to join (host:port or auto); "
                        "default: start a local one")
    add_common(p)
    p.add_argument("--scan", action="store_true",
                   help="then scan each model over a corpus (see `neurolens scan`) and write the corpus "
                        "evidence of its ranked concepts")
    p.add_argument("--corpus", default="wordnet", help="the corpus of --scan (default wordnet)")
    p.add_argument("--scan-tokens", type=int, default=None, metavar="N", help="tokens of --scan (default all)")


def plan(args: argparse.Namespace) -> tuple[list[str], list[str], dict[str, str]]:
    """The models and concepts asked for, checked before any work starts (exit 2 on a typo)."""
    from neurolens.sweeps import plan_sweep

    return plan_sweep(args.models, args.concepts, lambda m, c: config(args, m, c), device=args.device,
                      device_map=args.device_map, max_memory=args.max_memory,
                      what=("--models", "--concepts"))


def sweep(args: argparse.Namespace, bars, done: list[Outcome]) -> None:
    """Run the pairs, appending each outcome to `done` (kept when a StoreError stops it)."""
    from neurolens.sweeps import execute

    models, wanted, concepts = plan(args)
    executor = getattr(args, "executor", "inprocess")
    if getattr(args, "address", None) and executor != "ray":
        from neurolens.errors import ConfigError

        raise ConfigError("--address is for --executor ray")
    run_pairs = execute(executor, getattr(args, "address", None))
    run_pairs(models, wanted, concepts, lambda m, c: config(args, m, c), bars, done,
              dtype=args.dtype, device=args.device, device_map=args.device_map,
              max_memory=args.max_memory, out=args.out)
    if getattr(args, "scan", False):
        from neurolens.sweeps import scan_models

        scan_models(models, bars, done, corpus=args.corpus, tokens=args.scan_tokens, layers=args.layers,
                    dtype=args.dtype, device=args.device, out=args.out, executor=executor,
                    address=getattr(args, "address", None))


def summary_table(outcomes: list[Outcome]):
    from rich.table import Table

    style = {"ran": "green", "skipped": "yellow", "failed": "red"}
    t = Table(title="sweep")
    for c in ("model", "concept", "status", "detail"):
        t.add_column(c)
    for o in outcomes:
        t.add_row(o.model, o.concept, f"[{style[o.status]}]{o.status}[/]", o.detail)
    return t


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from neurolens.config import reports_dir, store_dir
    from neurolens.progress import Bars
    from neurolens.store import StoreError

    console = Console()  # the summary is the result: stdout; progress goes to stderr
    outcomes: list[Outcome] = []
    stopped = None
    with Bars(enabled=None if not args.quiet else False) as bars:
        try:
            sweep(args, bars, outcomes)
        except StoreError as e:
            if not outcomes:
                raise
            stopped = e
    index = None
    if not args.no_report and not stopped and any(o.status != "failed" for o in outcomes):
        from neurolens.reporting import render_set

        try:
            index = render_set(store_dir(args.out), reports_dir(args.out),
                               progress=False if args.quiet else None)
        except NeuroLensError as e:
            outcomes.append(Outcome("*", "*", "failed", f"report set: {first_line(e)}"))
    console.print(summary_table(outcomes))
    counts = {s: sum(o.status == s for o in outcomes) for s in ("ran", "skipped", "failed")}
    console.print(f"{counts['ran']} ran, {counts['skipped']} skipped, {counts['failed']} failed")
    if index:
        console.print(f"report set: {index}", soft_wrap=True, highlight=False)
    if stopped is not None:
        print(f"neurolens: error: {first_line(stopped)}", file=sys.stderr)
        return 2
    return 1 if counts["failed"] else 0
