"""`neurolens sweep`: many models × concepts, resumable, past failures, with a report set."""
from __future__ import annotations

import argparse

from neurolens.commands.run import add_common, config


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run every model × concept pair (resumable)")
    p.add_argument("--models", default="minilm", help="all, or a comma-separated list (default minilm)")
    p.add_argument("--concepts", default="all", help="all, or a comma-separated list (default all)")
    add_common(p)


def _split(value: str, every: list[str]) -> list[str]:
    return list(every) if value.strip() == "all" else [v.strip() for v in value.split(",") if v.strip()]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from neurolens.engine import registry
    from neurolens.errors import user_errors
    from neurolens.probes import ProbeError, list_concepts, load_concept
    from neurolens.progress import Bars

    concepts = {c.name: c.modality for c in list_concepts()}
    models = _split(args.models, list(registry.known_models()))
    wanted = _split(args.concepts, list(concepts))
    unknown = [c for c in wanted if c not in concepts]
    if unknown:
        raise ProbeError(f"unknown concept {unknown[0]!r}; known: {', '.join(concepts)}")
    if not models:
        raise registry.ModelError("no models named")
    from neurolens.pipeline import run as run_pipeline

    summary: list[tuple[str, str, str, str]] = []
    console = Console(stderr=True)
    with Bars(enabled=None if not args.quiet else False) as bars:
        for m in models:
            try:
                adapter = registry.load(m, device=args.device, dtype=args.dtype)
            except user_errors() as e:
                summary.append((m, "*", "failed", str(e).splitlines()[0]))
                continue
            todo = [c for c in wanted if concepts[c] == adapter.modality]
            if not todo:
                summary.append((m, "*", "skipped", f"no {adapter.modality} concepts among those asked"))
            for c in todo:
                try:
                    cfg = config(args, m, c)
                    cfg.report = False
                    res = run_pipeline(cfg, adapter=adapter, probes=load_concept(c), bars=bars)
                    status = "reused" if {"extract", "score"} <= set(res.skipped) else "ran"
                    n = 0 if res.top is None else res.top.num_rows
                    summary.append((adapter.name, c, status, f"{n} top neurons"))
                except user_errors() as e:
                    summary.append((m, c, "failed", str(e).splitlines()[0]))
            del adapter
        ok = [s for s in summary if s[2] in ("ran", "reused")]
        index = None
        if ok and not args.no_report:
            from neurolens.config import reports_dir, store_dir
            from neurolens.reports import render_set

            index = render_set(store_dir(args.out), reports_dir(args.out))
    t = Table(title="sweep")
    for c in ("model", "concept", "status", "detail"):
        t.add_column(c)
    for row in summary:
        t.add_row(*row)
    console.print(t)
    if index:
        console.print(f"report set: {index}")
    return 1 if any(s[2] == "failed" for s in summary) else 0
