"""Benchmark: the ablation stage of a user's run, beside the time its products must take.

The user's path: ``neurolens run --model minilm --concept negation --ablate --top-k 10
--no-report --out DIR``, the CLI in its own process, ``reps`` times, each in a fresh store.
Its runs row gives seconds_extract, seconds_score and seconds_ablate, and its ablations
table the top-10's drop, random drop mean and z (read back with ``neurolens query``).
Issue 17's target: seconds_ablate ≤ 3 × (seconds_extract + seconds_score), with z ≥ 3 and
drop ≥ 5× the random drop.

Beside it, the floor no exact fp32 ablation of this design can go under on this CPU:

* the dense FLOPs of that run's ablation stage, counted by torch's `FlopCounterMode` on the
  same command's work in a child process (oneDNN's linear is invisible to the counter, so
  the counting run takes torch's own path: NEUROLENS_ONEDNN=0);
* the best fp32 product rate at the model's dense shapes on the device the run used
  (the CPU: torch's and oneDNN's kernels both tried; a GPU where there is one, as the
  CLI's `--device auto` picks), at several row counts;
* floor = FLOPs / best rate: the ablation's matrix products alone, every one at the
  fastest rate this CPU reaches, nothing else counted.

Where floor / (extract + score) exceeds 3, the target cannot be met here by any exact fp32
implementation of these sets on these examples; only fewer sets or examples, lower
precision, or a faster CPU would meet it.

    python benchmarks/bench_run_ablation.py [--smoke]   (NEUROLENS_BENCH_REPS=n: runs)

Writes benchmarks/results/run_ablation.json (.smoke.json for --smoke) and prints a markdown
table. --smoke runs the same with --top-k 2, once.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

MODEL, CONCEPT = "minilm", "negation"
TARGET = 3.0
ROWS = (512, 2048, 8192)        # rows of the product-rate probes (a block pass is ~1,000-8,000)


def _cli(*args: str, timeout: float = 1800) -> dict:
    r = common.run_measured([sys.executable, "-m", "neurolens", *args], timeout=timeout)
    if r["status"] != 0:
        tail = "\n".join((r["stderr"] or r["stdout"]).strip().splitlines()[-10:])
        raise RuntimeError(f"neurolens {' '.join(args)} exited with {r['status']}:\n{tail}")
    return r


def _query(out: str, sql: str) -> list[dict]:
    return json.loads(_cli("query", "--out", out, "--format", "json", sql, timeout=300)["stdout"])


def _user_run(top_k: int) -> dict:
    """One `neurolens run ... --ablate` in a fresh store: its stage seconds and its top-k row."""
    with tempfile.TemporaryDirectory() as out:
        r = _cli("run", "--model", MODEL, "--concept", CONCEPT, "--ablate", "--top-k", str(top_k),
                 "--no-report", "--out", out)
        (run,) = _query(out, "select seconds_extract, seconds_score, seconds_ablate from runs")
        (top,) = _query(out, f"select drop, random_drop_mean, z from ablations "
                             f"where mode = 'cumulative' and k = {top_k}")
    return {**{k: float(v) for k, v in run.items()}, "top": top, "wall_s": r["wall_s"],
            "peak_rss_mb": r["peak_rss_mb"],
            "ratio": run["seconds_ablate"] / (run["seconds_extract"] + run["seconds_score"])}


def _count_job(job, top_k: int) -> None:
    """In a child: the same run through the Python API, the ablation stage under a FLOP
    counter; also the shapes of the model's dense layers."""
    os.environ["NEUROLENS_ONEDNN"] = "0"
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    import neurolens as nl
    from neurolens.engine.causal.ablation import stage as ablate

    job.imported()
    counted: dict = {}
    run_ablations = ablate.run_ablations

    def counting(adapter, *a, **kw):
        with FlopCounterMode(display=False) as fc:
            t = run_ablations(adapter, *a, **kw)
        counted["by_op"] = {str(k): int(v) for k, v in fc.get_flop_counts().get("Global", {}).items()}
        counted["total"] = int(fc.get_total_flops())
        counted["shapes"] = sorted({(m.in_features, m.out_features) for m in adapter.model.modules()
                                    if isinstance(m, nn.Linear)})
        return t

    ablate.run_ablations = counting
    job.ready()
    with tempfile.TemporaryDirectory() as out:
        nl.find(MODEL, CONCEPT, ablate=True, top_k=top_k, out=out, report=False, progress=False)
    job.done(**counted)


def _best_rate(shapes, reps: int) -> dict:
    """The fastest fp32 product rate (GFLOP/s) this machine reaches at these [in, out]
    shapes, on the device the run used (a GPU where there is one, as `--device auto`)."""
    import torch

    from neurolens.engine.runtime.fast import available

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    op = torch.ops.mkldnn._linear_pointwise if dev.type == "cpu" and available() else None
    rows = ROWS if dev.type == "cpu" else ROWS + (65536,)
    rates = {}
    for i, o in shapes:
        w, b = torch.randn(o, i, device=dev), torch.randn(o, device=dev)
        for m in rows:
            x = torch.randn(m, i, device=dev)
            ways = {"torch": lambda: torch.nn.functional.linear(x, w, b)}
            if op is not None:
                ways["onednn"] = lambda: op(x, w, b, "none", [], "")
            for name, f in ways.items():
                f()
                best = float("inf")
                for _ in range(reps):
                    common.sync(dev)
                    t = time.perf_counter()
                    for _ in range(10):
                        f()
                    common.sync(dev)
                    best = min(best, (time.perf_counter() - t) / 10)
                rates[f"{i}x{o} rows={m} {name}"] = 2 * m * i * o / best / 1e9
    return {"rate_device": str(dev), "best_gflops": max(rates.values()), "rates_gflops": rates}


def run(smoke: bool = False) -> dict:
    reps = int(os.environ.get("NEUROLENS_BENCH_REPS", 1 if smoke else 3))
    top_k = 2 if smoke else 10
    runs = [_user_run(top_k) for _ in range(reps)]
    counted = common.measure_job("benchmarks.bench_run_ablation:_count_job", top_k=top_k)
    rate = _best_rate([tuple(s) for s in counted["shapes"]], 2 if smoke else 5)
    floor_s = counted["total"] / (rate["best_gflops"] * 1e9)
    med = {k: common.median([r[k] for r in runs])
           for k in ("seconds_extract", "seconds_score", "seconds_ablate", "ratio")}
    denom = med["seconds_extract"] + med["seconds_score"]
    return {
        "benchmark": "run_ablation",
        "smoke": smoke,
        "machine": common.machine(),
        "versions": common.versions("transformers"),
        "sizes": {"model": MODEL, "concept": CONCEPT, "top_k": top_k, "runs": reps},
        "runs": runs,
        "median": med,
        "ratio": med["ratio"],
        "target": TARGET,
        "met": med["ratio"] <= TARGET and all(r["top"]["z"] >= 3 and r["top"]["drop"]
                                              >= 5 * r["top"]["random_drop_mean"] for r in runs),
        "ablation_flops": counted["total"],
        "ablation_flops_by_op": counted["by_op"],
        "dense_shapes": counted["shapes"],
        **rate,
        "floor_s": floor_s,
        "floor_ratio": floor_s / denom,
        "ablate_over_floor": med["seconds_ablate"] / floor_s,
    }


def table(res: dict) -> str:
    m, s = res["median"], res["sizes"]
    lines = [
        f"`neurolens run --model {s['model']} --concept {s['concept']} --ablate --top-k {s['top_k']}` "
        f"× {s['runs']}, {res['machine'].get('processor', '?')}",
        "",
        "| run | extract s | score s | ablate s | ablate / (extract + score) | top-k drop | random drop | z |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(res["runs"], 1):
        t = r["top"]
        lines.append(f"| {i} | {r['seconds_extract']:.2f} | {r['seconds_score']:.2f} | "
                     f"{r['seconds_ablate']:.2f} | {r['ratio']:.2f}× | {t['drop']:.4f} | "
                     f"{t['random_drop_mean']:.5f} | {t['z']:.1f} |")
    lines += [
        "",
        f"Median ratio **{res['ratio']:.2f}×** (target ≤ {res['target']:.0f}×: "
        f"{'met' if res['met'] else 'not met'}). The ablation stage's dense products: "
        f"{res['ablation_flops'] / 1e12:.3f} TFLOP; the best fp32 product rate at the model's "
        f"shapes on {res.get('rate_device', 'cpu')}: {res['best_gflops']:.0f} GFLOP/s; so the "
        f"products alone take at least "
        f"**{res['floor_s']:.2f} s = {res['floor_ratio']:.2f}×** (extract + score "
        f"{m['seconds_extract'] + m['seconds_score']:.2f} s). The stage runs at "
        f"{res['ablate_over_floor']:.2f}× that floor.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(common.main("run_ablation", run, table, doc=__doc__,
                                 smoke_help="--top-k 2, one run"))
