"""`neurolens run`: one model × concept through the whole pipeline."""
from __future__ import annotations

import argparse

from neurolens.constants import ALPHA
from neurolens.engine.runtime.pooling import POOLINGS

POOLING_HELP = ("how a neuron's values over an example's tokens become one number: "
                "mean = the average over the real tokens (default); max = the largest value; "
                "last = the last real token (what a decoder predicts from); concept = the average "
                "over the concept word's tokens (the probe's marked span; examples without one "
                "fall back to mean). Images always pool over space (max, or else mean)")


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", type=int, nargs="+", metavar="L", help="layers to probe (default: all)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--ablate", dest="ablate", action="store_true", default=None,
                   help="confirm the top neurons by causal ablation (default for sweep)")
    g.add_argument("--no-ablate", dest="ablate", action="store_false",
                   help="skip the causal ablation (default for run)")
    p.add_argument("--ablate-methods", default="zero", metavar="M[,M]",
                   help="ablation methods, comma-separated: zero, mean, range (default zero)")
    p.add_argument("--ablate-controls", type=int, default=99, metavar="N",
                   help="random controls per tested set, matched on layer and magnitude band "
                        "(default 99: p resolves 0.01)")
    p.add_argument("--all-controls", action="store_true",
                   help="measure every control, not only those the sequential test needs "
                        "(the verdicts are the same; more rows, more time)")
    p.add_argument("--top-k", type=int, default=10, metavar="K",
                   help="how many of the best-ranked neurons are printed, ablated (alone, "
                        "cumulatively and against random sets) and labelled (default 10)")
    p.add_argument("--pooling", choices=POOLINGS, default="mean", help=POOLING_HELP)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="the dtype the model runs in (default float32; bfloat16 and float16 "
                        "halve its memory). The store keeps pooled values as float16 either way")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--device-map", default=None, metavar="MAP",
                   help="spread a big model over GPUs, CPU and disk (auto, balanced, sequential)")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="cap per device with --device-map: 20GiB, or 0=20GiB,cpu=8GiB; the rest "
                        "is offloaded to disk (implies --device-map auto)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N",
                   help="examples per forward pass (default 32; ablation runs N/2 with its "
                        "replicas); lower it when memory runs out")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of torch and of the random neuron sets ablation compares "
                        "against (default 0): the same seed gives the same controls")
    p.add_argument("--no-importance", action="store_true",
                   help="skip the backward pass (about half the time): importance and "
                        "importance_pct stay empty and score = sqrt(max(selectivity,0) · "
                        "consistency) instead of the cube root of the three")
    p.add_argument("--no-report", action="store_true",
                   help="write the store only, no HTML report (render it later with "
                        "`neurolens report`)")
    p.add_argument("--out", default=None, help="output folder (default $NEUROLENS_OUT or ./neurolens-out)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="probe one model for one concept")
    p.add_argument("--model", required=True,
                   help="registry name (see `neurolens models`), .gguf file, local checkpoint "
                        "folder, or hub id")
    p.add_argument("--concept", help="a built-in concept (see `neurolens concepts`)")
    p.add_argument("--probes", help="a custom probe file (.json, .jsonl, .csv) or image folder")
    add_common(p)


def config(args: argparse.Namespace, model: str, concept: str | None, *, ablate: bool = False):
    """The run's configuration; `ablate` is the command's default when neither
    --ablate nor --no-ablate is given."""
    from neurolens.pipeline import RunConfig

    return RunConfig(model=model, concept=concept, probes=getattr(args, "probes", None),
                     layers=args.layers, pooling=args.pooling, dtype=args.dtype, device=args.device,
                     device_map=args.device_map, max_memory=args.max_memory,
                     batch_size=args.batch_size, seed=args.seed, ablate=ablate if args.ablate is None else args.ablate,
                     ablate_methods=args.ablate_methods, ablate_controls=args.ablate_controls,
                     ablate_all_controls=args.all_controls,
                     top_k=args.top_k,
                     importance=not args.no_importance, report=not args.no_report, out=args.out)


def print_top(res, console, k: int = 10) -> None:
    """The finding's top k neurons as a rich table (`res` is a neurolens.api.Finding); with
    ablations, then each top neuron's single-ablation z and whether it is validated, and the
    top-k set's ablation statistics per method."""
    from rich.table import Table

    top = res.top(k)
    t = Table(title=f"top neurons · {res.model} · {res.concept}")
    ablated = top is not None and "validated" in top.columns
    for c in ("neuron", "rank", "score", "selectivity", "consistency", "importance pct", "q",
              "held-out q", "replicated") + (("validated",) if ablated else ()):
        t.add_column(c, justify="right", min_width=10 if c == "neuron" else None)
    if top is not None:
        for r in top.to_dicts():
            extra = (("—" if r["validated"] is None else "yes" if r["validated"] else "no"),) if ablated else ()
            imp = "—" if r["importance_pct"] is None else f"{r['importance_pct']:.2f}"
            pt = "—" if r.get("q_test") is None else f"{r['q_test']:.1e}"
            t.add_row(f"L{r['layer']}.N{r['neuron']}", str(r["rank"]), f"{r['score']:.3f}",
                      f"{r['selectivity']:+.3f}", f"{r['consistency']:.2f}", imp, f"{r['q_value']:.1e}",
                      pt, "yes" if r.get("replicated") else "no", *extra)
    if getattr(res, "baseline", None):
        console.print(res.baseline, soft_wrap=True, highlight=False)
    if getattr(res, "note", None):
        console.print(res.note, soft_wrap=True, highlight=False)
    console.print(t)
    if ablated:
        console.print(ablation_line(res), soft_wrap=True, highlight=False)
    if top is None or top.height == 0:
        console.print(f"no concept-specific neuron passes q < {ALPHA} (concept-preferring, effect above "
                      "the gate, not lexical) for this concept")
    if ablated:
        print_ablation(res, console)


def print_ablation(res, console) -> None:
    """Per method, the cumulative top-k set at its largest k against its magnitude-matched
    random sets: the ablations table's statistics and its stored verdict. One line each, so
    no terminal width wraps them."""
    import polars as pl

    ab = res.ablations.filter(pl.col("mode") == "cumulative")
    num = lambda x, f: "—" if x is None else format(x, f)  # noqa: E731
    if ab.height:
        console.print(f"ablation of the top-k set · {res.model} · {res.concept}", highlight=False)
    for r in ab.sort("k").group_by("method", maintain_order=True).last().sort("method").to_dicts():
        rand = ("—" if r["random_drop_mean"] is None else
                f"{r['random_drop_mean']:+.3f} ± {r['random_drop_std'] or 0:.3f}")
        ok = "—" if r["validated"] is None else "yes" if r["validated"] else "no"
        console.print(f"  {r['method']}, k={r['k']}: {r['metric']} {num(r['base_conf'], '.3f')} → "
                      f"{num(r['ablated_conf'], '.3f')}, drop {num(r['drop'], '+.3f')} against random "
                      f"drop {rand} (z {num(r['z'], '+.2f')}), p {num(r['p_value'], '.3g')}, "
                      f"q {num(r['q_value'], '.3g')}, off-target drop {num(r['off_target_drop'], '+.3f')}, "
                      f"specificity {num(r['specificity'], '.2f')}, validated {ok}", highlight=False,
                      soft_wrap=True)


def ablation_line(res) -> str:
    """What `validated` means and which confidence the drops are measured on."""
    from neurolens.constants import SPECIFICITY_MIN

    ab = res.ablations
    metrics = ", ".join(sorted(set(ab["metric"].drop_nulls().to_list()))) or "—"
    return (f"ablation: {res.summary()['validated']} neurons validated (q < {ALPHA} over the tested "
            f"sets against magnitude-matched random controls, and a concept drop > {SPECIFICITY_MIN:g}× "
            f"the off-target drop); drops measured on {metrics}")


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
