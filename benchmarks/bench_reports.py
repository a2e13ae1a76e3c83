"""Report benchmark: render a whole report set (every model × concept report, the model
comparison and the index) from a synthetic store in the store's own layout.

Full size: 2 models × 4 concepts, 12 layers × 3,072 neurons each (36,864 neurons per
report, the size of GPT-2 / BERT-base), 100 + 100 probe examples, activations for every
layer, ablations, labels and top examples. Target: the set renders in under 30 s on 2 cores.

    python benchmarks/bench_reports.py            # full size
    python benchmarks/bench_reports.py --smoke    # tiny, seconds
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "reports.json"
TARGET_S = 30.0


def _machine() -> dict:
    try:
        sys.path.insert(0, str(ROOT))
        from benchmarks.common import machine

        return machine()
    except Exception:   # the common helpers are optional here
        import platform

        return {"platform": platform.platform(), "python": platform.python_version(),
                "cpu_count": os.cpu_count()}


def _pin_two_cores() -> list[int] | None:
    """Run on at most 2 cores, as the target says (Linux only)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))[:2]
    os.sched_setaffinity(0, cpus)
    return cpus


def run(smoke: bool = False) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from report_fixtures import ModelSpec, build_store

    import neurolens.reports.html as rhtml
    from neurolens.reports import render_set

    cpus = _pin_two_cores()
    if smoke:
        models = [ModelSpec("gpt2", 12, 128), ModelSpec("bert-base-uncased", 6, 128, random_rows=False,
                                                          top_examples=False)]
        n_ex, reps = 40, 1
    else:
        models = [ModelSpec("gpt2", 12, 3072),
                  ModelSpec("bert-base-uncased", 12, 3072, random_rows=False, top_examples=False)]
        n_ex, reps = 100, 3
    tmp = Path(tempfile.mkdtemp(prefix="nl-bench-reports-"))
    try:
        t0 = time.perf_counter()
        build_store(tmp / "store", models, n_pos=n_ex, n_neg=n_ex)
        build_s = time.perf_counter() - t0

        # the Vega bundle is made once per vl-convert version and cached on disk
        t0 = time.perf_counter()
        if smoke:
            rhtml.vega_bundle()
            bundle_s, bundle_cold = time.perf_counter() - t0, None
        else:
            old = os.environ.get("NEUROLENS_CACHE")
            os.environ["NEUROLENS_CACHE"] = str(tmp / "cache")
            rhtml.vega_bundle.cache_clear()
            rhtml.vega_bundle()
            bundle_s, bundle_cold = time.perf_counter() - t0, True
            if old is None:
                os.environ.pop("NEUROLENS_CACHE")
            else:
                os.environ["NEUROLENS_CACHE"] = old

        walls, cpus_s = [], []
        for i in range(reps):
            out = tmp / f"reports-{i}"
            w0, c0 = time.perf_counter(), time.process_time()
            render_set(tmp / "store", out, progress=False)
            walls.append(time.perf_counter() - w0)
            cpus_s.append(time.process_time() - c0)
        pages = sorted(out.glob("*.html"))
        sizes = {p.name: p.stat().st_size for p in pages}
        reports = [s for n, s in sizes.items() if n != "index.html" and not n.startswith("compare__")]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wall = statistics.median(walls)
    return {
        "benchmark": "reports",
        "smoke": smoke,
        "machine": _machine(),
        "cpus_used": cpus,
        "store": {"models": [{"name": m.name, "layers": m.n_layers, "neurons_per_layer": m.n_neurons}
                             for m in models],
                  "concepts": len(models[0].concepts), "examples_per_concept": 2 * n_ex,
                  "build_s": round(build_s, 2)},
        "pages": len(pages),
        "reports": len(reports),
        "vega_bundle_s": round(bundle_s, 2),
        "vega_bundle_cold": bundle_cold,
        "render_set_wall_s": [round(x, 2) for x in walls],
        "render_set_cpu_s": [round(x, 2) for x in cpus_s],
        "median_wall_s": round(wall, 2),
        "per_page_wall_s": round(wall / max(len(pages), 1), 3),
        "max_report_mib": round(max(reports) / 2**20, 2),
        "mean_report_mib": round(statistics.mean(reports) / 2**20, 2),
        "page_bytes": sizes,
        "target_s": TARGET_S,
        "under_target": wall < TARGET_S,
        "all_under_5mb": max(sizes.values()) < 5 * 2**20,
    }


def markdown(res: dict) -> str:
    models = ", ".join(f"{m['name']} ({m['layers']}×{m['neurons_per_layer']})" for m in res["store"]["models"])
    cold = " (cold: bundled by vl-convert)" if res["vega_bundle_cold"] else " (cache)"
    lines = [
        f"Store: {models} × {res['store']['concepts']} concepts, "
        f"{res['store']['examples_per_concept']} examples each; built in {res['store']['build_s']} s. "
        f"CPUs used: {res['cpus_used']}.",
        "",
        "| pages | reports | render set wall (median s) | CPU s | per page (s) | max report (MiB) "
        "| mean report (MiB) | Vega bundle (s) | under 30 s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
        f"| {res['pages']} | {res['reports']} | {res['median_wall_s']} | "
        f"{statistics.median(res['render_set_cpu_s']):.2f} | {res['per_page_wall_s']} | "
        f"{res['max_report_mib']} | {res['mean_report_mib']} | {res['vega_bundle_s']}{cold} | "
        f"{'yes' if res['under_target'] else 'NO'} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks import common

    return common.main("reports", run, markdown, argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
