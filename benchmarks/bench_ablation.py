"""Benchmark: 32 single-neuron ablations, batched (replicas + shared prefix) vs one forward each.

Same model (the embedded MiniLM), same test examples, same 32 neurons (seeded, spread
over every layer), both ways in one process with interleaved repetitions; medians are
reported. The results must agree to float tolerance, or the benchmark fails.

    python benchmarks/bench_ablation.py [--smoke]

Writes benchmarks/results/ablation.json (ablation.smoke.json for --smoke) and prints a
markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
N_NEURONS = 32


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for p in ("neurolens", "torch", "transformers", "numpy"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out


def run(smoke: bool = False) -> dict:
    from neurolens.engine import registry
    from neurolens.engine.ablate_batch import ablate_sets
    from neurolens.engine.confidence import Confidence
    from neurolens.probes import load_concept

    torch.manual_seed(0)
    adapter = registry.load("minilm")
    probes = load_concept("negation")
    test = [e for e in probes.examples if e.split == "test"]
    n_examples = 16 if smoke else 32
    reps = 1 if smoke else 3
    rng = np.random.default_rng(0)
    examples = [test[i] for i in sorted(rng.choice(len(test), n_examples, replace=False))]
    train = [e for e in probes.examples if e.split == "train"]
    fit = [train[i] for i in sorted(rng.choice(len(train), 64, replace=False))] if smoke else probes.examples
    conf = Confidence(adapter, fit)
    n_sets = 8 if smoke else N_NEURONS
    layers = rng.integers(0, adapter.n_layers, n_sets)
    sets = [[(int(l), int(rng.integers(adapter.n_neurons(int(l)))))] for l in layers]
    batch = n_examples

    def batched():
        return ablate_sets(adapter, conf, examples, sets, batch_size=batch)

    def one_each():
        return np.stack([ablate_sets(adapter, conf, examples, [s], batch_size=batch, replicas=1,
                                     share_prefix=False)[0] for s in sets])

    a, b = batched(), one_each()                       # warm-up, and the agreement check
    err = float(np.abs(a - b).max())
    if err > 1e-4:
        raise AssertionError(f"batched and one-at-a-time ablations differ by {err:g}")
    times: dict[str, list[float]] = {"batched": [], "one_each": []}
    for _ in range(reps):                              # interleaved
        for name, fn in (("one_each", one_each), ("batched", batched)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "benchmark": "ablation",
        "smoke": smoke,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "device": str(adapter.device)},
        "versions": _versions(),
        "sizes": {"model": "minilm", "n_ablations": n_sets, "n_examples": n_examples,
                  "layers_of_neurons": sorted(int(x) for x in layers), "repetitions": reps},
        "times_s": times,
        "median_s": med,
        "ratio": med["one_each"] / med["batched"],
        "max_abs_diff": err,
    }


def table(res: dict) -> str:
    m = res["median_s"]
    s = res["sizes"]
    return "\n".join([
        f"| {s['n_ablations']} single-neuron ablations × {s['n_examples']} examples | median s |",
        "|---|---:|",
        f"| one forward each | {m['one_each']:.3f} |",
        f"| batched (replicas + shared prefix) | {m['batched']:.3f} |",
        f"| **speed-up** | **{res['ratio']:.2f}×** |",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition")
    args = ap.parse_args()
    res = run(args.smoke)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("ablation.smoke.json" if args.smoke else "ablation.json")
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))


if __name__ == "__main__":
    main()
