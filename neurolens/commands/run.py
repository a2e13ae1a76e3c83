"""`neurolens run`: one model × concept through the whole pipeline."""
from __future__ import annotations

import argparse

from neurolens.constants import ALPHA
from neurolens.engine.pooling import POOLINGS


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", type=int, nargs="+", metavar="L", help="layers to probe (default: all)")
    p.add_argument("--ablate", action="store_true", help="confirm the top neurons by causal ablation")
    p.add_argument("--top-k", type=int, default=10, metavar="K")
    p.add_argument("--pooling", choices=POOLINGS, default="mean")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-importance", action="store_true", help="skip the backward pass")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--out", default=None, help="output folder (default $NEUROLENS_OUT or ./neurolens-out)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="probe one model for one concept")
    p.add_argument("--model", required=True, help="registry name, local checkpoint folder, or hub id")
    p.add_argument("--concept", help="a built-in concept (see `neurolens concepts`)")
    p.add_argument("--probes", help="a custom probe file (.json, .jsonl, .csv) or image folder")
    add_common(p)


def config(args: argparse.Namespace, model: str, concept: str | None):
    from neurolens.pipeline import RunConfig

    return RunConfig(model=model, concept=concept, probes=getattr(args, "probes", None),
                     layers=args.layers, pooling=args.pooling, dtype=args.dtype, device=args.device,
                     batch_size=args.batch_size, seed=args.seed, ablate=args.ablate, top_k=args.top_k,
                     importance=not args.no_importance, report=not args.no_report, out=args.out)


def print_top(res, console, k: int = 10) -> None:
    """The finding's top k neurons as a rich table (`res` is a neurolens.api.Finding)."""
    from rich.table import Table

    top = res.top(k)
    t = Table(title=f"top neurons · {res.model} · {res.concept}")
    for c in ("neuron", "rank", "score", "selectivity", "consistency", "importance pct", "q"):
        t.add_column(c, justify="right")
    if top is not None:
        for r in top.to_dicts():
            imp = "—" if r["importance_pct"] is None else f"{r['importance_pct']:.2f}"
            t.add_row(f"L{r['layer']}.N{r['neuron']}", str(r["rank"]), f"{r['score']:.3f}",
                      f"{r['selectivity']:+.3f}", f"{r['consistency']:.2f}", imp, f"{r['q_value']:.1e}")
    console.print(t)
    if top.height == 0:
        console.print(f"no neuron passes q < {ALPHA} for this concept")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from neurolens.api import run_config
    from neurolens.progress import Bars

    cfg = config(args, args.model, args.concept)
    with Bars(enabled=None if not args.quiet else False) as bars:
        res = run_config(cfg, bars=bars)
    if res is None:  # a non-main process of a sharded launch
        return 0
    console = Console()
    print_top(res, console, cfg.top_k)
    if res.skipped:
        console.print(f"reused from the store: {', '.join(res.skipped)}")
    if res.report_path:
        console.print(f"report: {res.report_path}", soft_wrap=True, highlight=False)
    return 0
