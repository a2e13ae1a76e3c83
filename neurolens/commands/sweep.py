"""`neurolens sweep`: many models × concepts, resumable, past failures, with a report set.

Every pair goes through the same pipeline as `neurolens run`, whose stages skip the
partitions already in the store, so running the same sweep again (after a crash, a
`kill -9`, a full disk) only does what is missing. A model that cannot be loaded, or a
pair that fails, is recorded and the sweep goes on; the summary says what ran, what was
skipped and why, and the exit status is 1 when anything failed.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from dataclasses import dataclass

from neurolens.commands.run import add_common, config
from neurolens.errors import first_line


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run every model × concept pair (resumable)",
                       description="Run every model × concept pair through the pipeline. Pairs "
                                   "already in the store are skipped, so an interrupted sweep "
                                   "resumes when run again; a model that fails to load is "
                                   "reported and the sweep goes on (exit status 1).")
    p.add_argument("--models", default="minilm",
                   help="all, or a comma-separated list of names or checkpoint folders (default minilm)")
    p.add_argument("--concepts", default="all",
                   help="all, or a comma-separated list of built-in concepts (default all)")
    add_common(p)


@dataclass
class Outcome:
    model: str
    concept: str
    status: str   # ran | skipped | failed
    detail: str


def _split(value: str, every: list[str]) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    out: list[str] = []
    for v in items:
        for x in (every if v == "all" else [v]):
            if x not in out:
                out.append(x)
    return out


_first_line = first_line


def plan(args: argparse.Namespace) -> tuple[list[str], list[str], dict[str, str]]:
    """The models and concepts asked for, checked before any work starts (exit 2 on a typo)."""
    from neurolens.engine import registry
    from neurolens.pipeline import check_config
    from neurolens.probes import ProbeError, list_concepts

    concepts = {c.name: c.modality for c in list_concepts()}
    models = _split(args.models, list(registry.known_models()))
    wanted = _split(args.concepts, list(concepts))
    if not models:
        raise registry.ModelError("--models names no model")
    if not wanted:
        raise ProbeError("--concepts names no concept")
    unknown = [c for c in wanted if c not in concepts]
    if unknown:
        raise ProbeError(f"unknown concept {unknown[0]!r}; known: {', '.join(concepts)}")
    for m in models:
        registry.resolve(m)  # an unknown name or a folder that is not a checkpoint: exit 2 now
    check_config(config(args, models[0], wanted[0]))
    registry.pick_device(args.device)
    return models, wanted, concepts


def sweep(args: argparse.Namespace, bars, done: list[Outcome]) -> None:
    """Run the pairs, appending each outcome to `done` (kept when a StoreError stops it)."""
    from neurolens.engine import registry
    from neurolens.errors import user_errors
    from neurolens.pipeline import run as run_pipeline
    from neurolens.probes import load_concept
    from neurolens.store import StoreError

    models, wanted, concepts = plan(args)
    with bars.stage("sweep", len(models) * len(wanted)) as overall:
        for m in models:
            try:
                adapter = registry.load(m, device=args.device, dtype=args.dtype)
            except user_errors() as e:
                done.append(Outcome(m, "*", "failed", f"cannot load: {_first_line(e)}"))
                overall(len(wanted))
                continue
            todo = [c for c in wanted if concepts[c] == adapter.modality]
            other = [c for c in wanted if c not in todo]
            if other:
                done.append(Outcome(adapter.name, ", ".join(other), "skipped",
                                    f"{concepts[other[0]]} concepts; {adapter.name} is a "
                                    f"{adapter.modality} model"))
                overall(len(other))
            for c in todo:
                try:
                    cfg = config(args, m, c)
                    cfg.report = False  # the report set is rendered once, at the end
                    cfg.relabel = False  # and the model's labels once, after its concepts
                    res = run_pipeline(cfg, adapter=adapter, probes=load_concept(c), bars=bars)
                    stages = {"extract", "score"} | ({"ablate"} if args.ablate else set())
                    n = 0 if res.top is None else res.top.num_rows
                    if stages <= set(res.skipped):
                        done.append(Outcome(adapter.name, c, "skipped", "already in the store"))
                    else:
                        done.append(Outcome(adapter.name, c, "ran",
                                            f"{n} significant top neurons"))
                except StoreError as e:  # the store itself is unusable (disk full): stop
                    done.append(Outcome(adapter.name, c, "failed", _first_line(e)))
                    raise
                except user_errors() as e:
                    done.append(Outcome(adapter.name, c, "failed", _first_line(e)))
                except Exception as e:  # noqa: BLE001 - one broken pair must not end a sweep
                    if os.environ.get("NEUROLENS_DEBUG"):
                        traceback.print_exc()
                    done.append(Outcome(adapter.name, c, "failed",
                                        f"internal error: {type(e).__name__}: {_first_line(e)}"))
                overall(1)
            if any(o.model == adapter.name and o.status != "failed" for o in done):
                _relabel(args, adapter.name, done)
            del adapter


def _relabel(args: argparse.Namespace, model: str, done: list[Outcome]) -> None:
    """The model's labels, rebuilt once from every concept now stored for it."""
    from neurolens.config import store_dir
    from neurolens.errors import user_errors
    from neurolens.pipeline import new_run_id
    from neurolens.store import Store

    from neurolens.engine.label import label_model

    try:
        label_model(Store(store_dir(args.out)), model, run_id=new_run_id())
    except user_errors() as e:
        done.append(Outcome(model, "*", "failed", f"labels: {_first_line(e)}"))


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
    from neurolens.errors import user_errors
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
        from neurolens.reports import render_set

        try:
            index = render_set(store_dir(args.out), reports_dir(args.out),
                               progress=False if args.quiet else None)
        except user_errors() as e:
            outcomes.append(Outcome("*", "*", "failed", f"report set: {_first_line(e)}"))
    console.print(summary_table(outcomes))
    counts = {s: sum(o.status == s for o in outcomes) for s in ("ran", "skipped", "failed")}
    console.print(f"{counts['ran']} ran, {counts['skipped']} skipped, {counts['failed']} failed")
    if index:
        console.print(f"report set: {index}", soft_wrap=True, highlight=False)
    if stopped is not None:
        print(f"neurolens: error: {_first_line(stopped)}", file=sys.stderr)
        return 2
    return 1 if counts["failed"] else 0
