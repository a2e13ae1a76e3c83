"""`neurolens selfcheck`: the full pipeline on models whose concept neurons are known.

For each family a small checkpoint with planted neurons is built, then probed,
extracted, scored and ablated exactly as a user's model would be. The check passes
when the planted neurons are the ones found (recall@k = 1, k = number planted),
at most 5% of random neurons have q < 0.05 under the group-level test, and
zero-ablating the planted set beats random sets by z ≥ 3.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("selfcheck", help="prove the pipeline on planted ground-truth models")
    p.add_argument("--out", default=None,
                   help="output folder for the planted checkpoints and their store "
                        "(default $NEUROLENS_OUT or ./neurolens-out)")
    p.add_argument("--families", default="all",
                   help="all, or a comma-separated subset of gpt2,bert,roberta,resnet,llama")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the planted checkpoints' weights and of the ablation controls")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from neurolens.config import out_dir
    from neurolens.engine.planted.build import FAMILIES
    from neurolens.progress import Bars
    from neurolens.selfcheck import check_family

    fams = list(FAMILIES) if args.families == "all" else [f.strip() for f in args.families.split(",")]
    bad = [f for f in fams if f not in FAMILIES]
    if bad:
        from neurolens.engine.models.adapters.base import ModelError

        raise ModelError(f"unknown family {bad[0]!r}; choose from {', '.join(FAMILIES)}")
    root = Path(out_dir(args.out)) / "selfcheck"
    rows = []
    with Bars(enabled=None if not args.quiet else False) as bars:
        for fam in fams:
            rows.append(check_family(fam, root, seed=args.seed, bars=bars))
    t = Table(title="selfcheck: planted concept neurons")
    for c in ("family", "planted", "recall@k", "surface distractor", "decoy (selectivity)",
              "random q<0.05", "ablation p (z)", "specificity", "importance ρ", "pass"):
        t.add_column(c, justify="right")
    for r in rows:
        decoy = "—" if r.decoy_ok is None else \
            f"{'not ranked' if r.decoy_ok else 'RANKED'} ({r.decoy_selectivity:.2f})"
        t.add_row(r.family, str(r.k), f"{r.recall:.2f}", "not ranked" if r.surface_ok else "RANKED",
                  decoy, f"{r.random_sig_share:.3f}", f"{r.p_value:.3f} ({r.z:.1f})",
                  f"{r.specificity:.1f}", f"{r.importance_rho:.2f}",
                  "[green]yes" if r.ok else "[red]NO")
    Console().print(t)
    return 0 if all(r.ok for r in rows) else 1
