"""`neurolens neuron`: the page of one scanned neuron (ranked or not)."""
from __future__ import annotations

import argparse
import re

from neurolens.errors import ConfigError


def parse_neuron(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"[Ll](\d+)\.?[Nn](\d+)", text.strip())
    if not m:
        raise ConfigError(f"neuron {text!r} is not of the form L13.N891")
    return int(m.group(1)), int(m.group(2))


def add_parser(sub) -> None:
    p = sub.add_parser("neuron", help="write (and print the path of) one scanned neuron's page")
    p.add_argument("--model", required=True, help="the model's name as scanned")
    p.add_argument("neuron", metavar="L13.N891", help="layer and neuron")
    p.add_argument("--corpus", default=None, help="which scan (default: the model's only, or wordnet)")
    p.add_argument("--out", default=None, help="output folder (default $NEUROLENS_OUT or ./neurolens-out)")


def run(args: argparse.Namespace) -> int:
    from neurolens.scans import neuron_page

    layer, neuron = parse_neuron(args.neuron)
    print(neuron_page(args.model, layer, neuron, corpus=args.corpus, out=args.out))
    return 0
