"""Significant neurons before (Welch on examples) and after (the group as the unit), and
the share of the top-10 that replicate on held-out groups, for real MiniLM.

    python benchmarks/inference_figures.py [--concepts negation,royalty] [--out DIR]

Runs the pipeline (no ablation, no report) for each concept, then rescores the stored
train activations with the example-level test for the "before" column. Prints a
markdown table; rerun it after the built-in probes change.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def figures(concept: str, out: str) -> dict:
    from neurolens.score import example_arrays, inference
    from neurolens.numerics import ScoreAccumulator
    from neurolens.pipeline import RunConfig, run
    from neurolens.probes import load_concept
    from neurolens.store import Store, read_layer, read_table

    res = run(RunConfig(model="minilm", concept=concept, out=out, report=False))
    store = Store(Path(out) / "store")
    sc = read_table(store, "scores", {"model": "minilm", "concept": concept}).to_pydict()
    probes = load_concept(concept)
    ex_ids, train, labels, _ = example_arrays(probes)
    old = ScoreAccumulator()
    for layer in sorted(set(sc["layer"])):
        ids, acts = read_layer(store, "minilm", concept, layer)
        pos = np.searchsorted(ex_ids, ids)
        keep = train[pos]
        old.add(layer, acts[keep], labels[pos][keep])        # no groups: Welch on examples
    before = int((old.finalize()["q_value"] < 0.05).sum())
    q = np.array(sc["q_value"])
    rank = np.array([r if r is not None else 0 for r in sc["rank"]])
    rep = np.array(sc["replicated"], bool)
    top = np.flatnonzero((rank >= 1) & (rank <= 10))
    inf = inference(probes)
    return {"concept": concept, "train_units": inf.n_units, "design": inf.design,
            "before": before, "after": int((q < 0.05).sum()),
            "after_replicated": int(((q < 0.05) & rep).sum()),
            "top10_replicated": f"{int(rep[top].sum())}/{len(top)}", "note": res.note or ""}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concepts", default="negation,royalty")
    ap.add_argument("--out", default=None, help="store folder (default: a temporary one)")
    a = ap.parse_args(argv)
    out = a.out or tempfile.mkdtemp(prefix="nl-inference-")
    rows = [figures(c, out) for c in a.concepts.split(",")]
    print("| concept | train units | q < 0.05 before (Welch on examples) | q < 0.05 after (group-level) "
          "| of them replicated | top-10 replicated |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['concept']} | {r['train_units']} {r['design']} | {r['before']:,} | {r['after']:,} "
              f"| {r['after_replicated']:,} | {r['top10_replicated']} |")
    for r in rows:
        if r["note"]:
            print(f"{r['concept']}: {r['note']}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
