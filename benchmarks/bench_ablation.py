"""Benchmark: 32 single-neuron ablations, batched vs one forward each.

Same model (the embedded MiniLM, on the accelerator when there is one), same test
examples, same 32 neurons (seeded, spread over every layer), three ways in one process
with interleaved repetitions; medians are reported. The same is measured on the planted
ResNet, whose forward is overhead-bound rather than compute-bound. The three ways:

* one forward each: `ablate_sets` on one set at a time, nothing shared;
* prefix only: replicas stacked at the input of the first ablated block, blocks before
  it shared (`fan_out=False`);
* batched (the default): also the ablated block itself runs once and fans out.

The three must agree to float tolerance, or the benchmark fails.

Second, the random controls of a run (`engine/causal/ablation/stage.py`): 20 nested draws with the layers
of MiniLM's negation top-10 (0, 2, 3, 1, 1, 3, 2, 2, 1, 1) at the control sizes 1, 2, 5
and 10, and 20 single controls for each other layer, 140 sets, on the concept test
examples, with branching (a draw's sets share one replica until they differ) and without
(each set its own replica from its first ablated block on).

    python benchmarks/bench_ablation.py [--smoke]      (NEUROLENS_BENCH_REPS=n: repetitions)

Writes benchmarks/results/ablation.json (ablation.smoke.json for --smoke) and prints a
markdown table.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

N_NEURONS = 32
TOP_LAYERS = (0, 2, 3, 1, 1, 3, 2, 2, 1, 1)     # MiniLM's negation top-10, by rank


def _controls(adapter, conf, examples, reps: int, rng) -> dict:
    """The run's control sets with and without shared branches; node-block passes of each."""
    from neurolens.engine.causal.ablation.stage import control_sizes, distinct_sets, random_controls, split_sets
    from neurolens.engine.causal.ablation.executor import ablate_sets

    top = [(l, int(n)) for l, n in zip(TOP_LAYERS, rng.choice(adapter.n_neurons(0), len(TOP_LAYERS),
                                                             replace=False))]
    draws, singles = random_controls(top, adapter.n_neurons, 20, 0)
    _, ctrl = split_sets(top, distinct_sets(top, draws, singles, control_sizes(len(top))))
    batch = 16
    jobs = {"branches": lambda: ablate_sets(adapter, conf, examples, ctrl, batch_size=batch),
            "no_branches": lambda: ablate_sets(adapter, conf, examples, ctrl, batch_size=batch,
                                               share_branches=False)}
    out = {k: f() for k, f in jobs.items()}
    err = float(np.abs(out["branches"] - out["no_branches"]).max())
    if err > 1e-4:
        raise AssertionError(f"ablation with and without shared branches differs by {err:g}")
    L = adapter.n_layers
    first = lambda s: min(l for l, _ in s)  # noqa: E731
    passes = {"no_branches": sum(L - 1 - first(s) for s in ctrl),
              "branches": sum(len({tuple(sorted(x for x in s if x[0] < i)) for s in ctrl if first(s) < i})
                              for i in range(L))}
    times = common.interleaved(jobs, reps, warmup=0, dev=adapter.device)
    med = {k: common.median(v) for k, v in times.items()}
    return {"n_sets": len(ctrl), "n_examples": len(examples), "top_layers": list(TOP_LAYERS),
            "times_s": times, "median_s": med, "ratio": med["no_branches"] / med["branches"],
            "block_passes_after_first": passes,
            "ratio_bound_compute": passes["no_branches"] / passes["branches"], "max_abs_diff": err}


def _measure(adapter, conf, examples, n_sets: int, reps: int, rng) -> dict:
    """The three ways on one model, interleaved; their agreement and the block-pass bound."""
    from neurolens.engine.causal.ablation.executor import ablate_sets

    layers = rng.integers(0, adapter.n_layers, n_sets)
    sets = [[(int(l), int(rng.integers(adapter.n_neurons(int(l)))))] for l in layers]
    batch = len(examples)
    jobs = {
        "one_each": lambda: np.stack([ablate_sets(adapter, conf, examples, [s], batch_size=batch,
                                                  replicas=1, share_prefix=False)[0] for s in sets]),
        "prefix_only": lambda: ablate_sets(adapter, conf, examples, sets, batch_size=batch, fan_out=False),
        "batched": lambda: ablate_sets(adapter, conf, examples, sets, batch_size=batch),
    }
    out = {k: f() for k, f in jobs.items()}             # the agreement check
    err = max(float(np.abs(out[k] - out["one_each"]).max()) for k in out)
    if err > 1e-4:
        raise AssertionError(f"batched and one-at-a-time ablations differ by {err:g}")
    # block passes of the batch, the cost an exact ablation cannot avoid on a compute-bound
    # device: one forward each runs every block per set; batched runs each block before the
    # deepest first layer once, each group's ablated block once, and the blocks after a
    # set's layer once per set
    L, firsts = adapter.n_layers, sorted({int(l) for l in layers})
    passes = {"one_each": n_sets * L,
              "batched": max(firsts) + len(firsts) + sum(L - 1 - int(l) for l in layers)}
    times = common.interleaved(jobs, reps, warmup=0, dev=adapter.device)
    med = {k: common.median(v) for k, v in times.items()}
    return {"n_ablations": n_sets, "n_examples": len(examples), "n_layers": L,
            "layers_of_neurons": sorted(int(x) for x in layers), "times_s": times, "median_s": med,
            "ratio": med["one_each"] / med["batched"],
            "ratio_prefix_only": med["one_each"] / med["prefix_only"],
            "block_passes": passes, "ratio_bound_compute": passes["one_each"] / passes["batched"],
            "max_abs_diff": err}


def run(smoke: bool = False) -> dict:
    import tempfile
    from pathlib import Path

    from neurolens.engine.models import registry
    from neurolens.engine.causal.confidence import Confidence
    from neurolens.engine.planted.build import build_planted
    from neurolens.probes import load_concept

    torch.manual_seed(0)
    reps = int(os.environ.get("NEUROLENS_BENCH_REPS", 1 if smoke else 5))
    n_examples = 16 if smoke else 32
    n_sets = 8 if smoke else N_NEURONS
    rng = np.random.default_rng(0)

    # the headline: MiniLM, a real pretrained encoder, negation test examples
    adapter = registry.load("minilm", device="auto")
    probes = load_concept("negation")
    test = [e for e in probes.examples if e.split == "test"]
    examples = [test[i] for i in sorted(rng.choice(len(test), n_examples, replace=False))]
    train = [e for e in probes.examples if e.split == "train"]
    fit = [train[i] for i in sorted(rng.choice(len(train), 64, replace=False))] if smoke else probes.examples
    conf = Confidence(adapter, fit)
    main = _measure(adapter, conf, examples, n_sets, reps, rng)
    concept = [e for e in test if e.label == 1][:16 if smoke else None]
    controls = _controls(adapter, conf, concept, reps, rng)

    # the planted ResNet: a forward of 32 small images is overhead-bound, not compute-bound
    # (the regime an accelerator puts a real model in), so replicas nearly come for free
    with tempfile.TemporaryDirectory() as tmp:
        pm = build_planted("resnet", Path(tmp) / "resnet", seed=0)
        small = registry.load(str(pm.path), device="auto")
        test = [e for e in pm.probes.examples if e.split == "test"][:n_examples]
        other = _measure(small, Confidence(small, pm.probes.examples), test, n_sets, reps, rng)

    return {
        "benchmark": "ablation",
        "smoke": smoke,
        "machine": common.machine(),
        "device": common.device_name(adapter.device),
        "versions": common.versions("transformers"),
        "sizes": {"model": "minilm", "n_ablations": n_sets, "n_examples": n_examples,
                  "layers_of_neurons": main["layers_of_neurons"], "repetitions": reps},
        **{k: main[k] for k in ("times_s", "median_s", "ratio", "ratio_prefix_only", "block_passes",
                                "ratio_bound_compute", "max_abs_diff")},
        "planted_resnet": other,
        "controls": controls,
    }


def table(res: dict) -> str:
    o = res["planted_resnet"]
    c = res["controls"]
    m = res["median_s"]
    s = res["sizes"]
    return "\n".join([
        f"| {s['n_ablations']} single-neuron ablations × {s['n_examples']} examples, {res['device']} "
        f"| median s |",
        "|---|---:|",
        f"| one forward each | {m['one_each']:.3f} |",
        f"| prefix only (replicas from the ablated block's input) | {m['prefix_only']:.3f} |",
        f"| batched (shared prefix + fan-out of the ablated block) | {m['batched']:.3f} |",
        f"| **speed-up** | **{res['ratio']:.2f}×** (prefix only {res['ratio_prefix_only']:.2f}×) |",
        f"| block passes, one each / batched (the bound where compute is the limit) "
        f"| {res['block_passes']['one_each']} / {res['block_passes']['batched']} "
        f"= {res['ratio_bound_compute']:.2f}× |",
        "",
        f"Planted ResNet ({o['n_layers']} blocks, 64×64 images, overhead-bound): one forward each "
        f"{o['median_s']['one_each']:.3f} s, prefix only {o['median_s']['prefix_only']:.3f} s, "
        f"batched {o['median_s']['batched']:.3f} s: **{o['ratio']:.1f}×** "
        f"(block-pass bound {o['ratio_bound_compute']:.2f}×).",
        "",
        f"A run's {c['n_sets']} random controls (top-10 layers {c['top_layers']}) × {c['n_examples']} "
        f"concept examples: each set its own replica {c['median_s']['no_branches']:.2f} s, shared "
        f"branches {c['median_s']['branches']:.2f} s: **{c['ratio']:.2f}×** (block passes after the "
        f"first ablated block {c['block_passes_after_first']['no_branches']} / "
        f"{c['block_passes_after_first']['branches']} = {c['ratio_bound_compute']:.2f}×).",
    ])


if __name__ == "__main__":
    raise SystemExit(common.main("ablation", run, table, doc=__doc__, smoke_help="tiny sizes, one repetition"))
