"""`neurolens models`: the registry's names and what they resolve to."""
from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the model registry")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="a table (default) or JSON")


def run(args: argparse.Namespace) -> int:
    from neurolens.engine.models.registry import adapters, known_models

    rows = [{"name": k, "resolves_to": v} for k, v in known_models().items()]
    if args.format == "json":
        print(json.dumps(rows))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="models (also: any local checkpoint directory or hub id of a supported family)")
    t.add_column("name")
    t.add_column("resolves to")
    for r in rows:
        t.add_row(r["name"], r["resolves_to"])
    Console().print(t)
    Console().print("supported architectures: " + ", ".join(sorted(adapters())))
    Console().print("also: torchvision:resnet18, torchvision:resnet50 (torchvision's ImageNet weights, "
                    "where torchvision imports: pip install '.[vision-torchvision]')")
    return 0
