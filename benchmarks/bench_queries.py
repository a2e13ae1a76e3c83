"""Query-layer benchmark: named queries over a large `scores` table in the store's own layout.

Full size: 10 models × 14 concepts × 36,864 neurons = 5,160,960 score rows (140 Hive
partitions written with Store.write_partition). Each repetition opens the store afresh
(views + views.sql: "setup") and runs the named query ("query"); medians are reported.

    python benchmarks/bench_queries.py            # full size
    python benchmarks/bench_queries.py --smoke    # tiny, seconds
"""
from __future__ import annotations

import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

RESULTS = Path(__file__).resolve().parent / "results" / "queries.json"
# (n_layers, width): every model has 36,864 neurons, spread over different depths
SHAPES = [(12, 3072), (24, 1536), (6, 6144), (18, 2048), (9, 4096)]
QUERIES = ("top_neurons", "layer_profile")


def _scores_table(rng: np.random.Generator, n_layers: int, width: int, run_id: str) -> pa.Table:
    from neurolens.store.schema import SCORES

    n = n_layers * width
    layer = np.repeat(np.arange(n_layers, dtype=np.int32), width)
    neuron = np.tile(np.arange(width, dtype=np.int32), n_layers)
    # kernels compute in float32; the store holds float64
    f = lambda a: np.asarray(a, dtype=np.float32).astype(np.float64)  # noqa: E731
    auc = f(rng.beta(2, 2, n))
    sig_mask = rng.random(n) < 0.03
    auc[sig_mask] = f(rng.uniform(0.75, 0.99, sig_mask.sum()))
    p = f(np.where(sig_mask, 10.0 ** rng.uniform(-12, -5, n), rng.uniform(0, 1, n)))
    order = np.argsort(p)
    q = np.empty(n)
    q[order] = np.minimum(np.minimum.accumulate((p[order] * n / np.arange(1, n + 1))[::-1])[::-1], 1)
    sel = 2 * auc - 1
    cons = f(np.clip(sel + rng.normal(0, 0.05, n), 0, 1))
    imp = f(rng.exponential(1e-3, n))
    imp_pct = (np.argsort(np.argsort(imp)) + 1) / n * 100
    score = np.cbrt(np.maximum(sel, 0) * cons * imp_pct / 100)
    sig = np.flatnonzero(q < 0.05)
    rank = np.zeros(n, dtype=np.int32)
    rank[sig[np.argsort(-score[sig], kind="stable")]] = np.arange(1, sig.size + 1, dtype=np.int32)
    mean_pos, std_pos = f(rng.normal(0.5, 0.3, n)), f(rng.uniform(0.1, 1, n))
    cols = {
        "layer": layer, "neuron": neuron, "n_layers": np.full(n, n_layers, np.int32),
        "depth": layer / (n_layers - 1), "selectivity": sel, "auc": auc,
        "cohens_d": f(sel * 3), "mean_pos": mean_pos, "mean_neg": f(rng.normal(0, 0.1, n)),
        "std_pos": std_pos, "std_neg": f(rng.uniform(0.1, 1, n)), "p_value": p, "q_value": q,
        "consistency": cons, "importance": imp, "importance_pct": imp_pct, "score": score,
        "rank": pa.array(rank, mask=rank == 0), "range_lo": mean_pos - 2 * std_pos,
        "range_hi": mean_pos + 2 * std_pos, "range_overlap": f(rng.uniform(0, 0.5, n)),
        "n_units": np.full(n, 24, np.int32), "selectivity_test": sel, "p_test": p,
        "replicated": q < 0.05, "q_test": q, "effect": f(sel * 3),
        "direction": np.where(sel >= 0, 1, -1).astype(np.int8),
        "significant": (q < 0.05) & (sel > 0), "opposite": (q < 0.05) & (sel < 0), "lexical": np.zeros(n, bool),
        "tpr_at_5fpr": cons, "rank_probeless": pa.nulls(n, pa.int32()),
        "rank_probe": pa.nulls(n, pa.int32()),
        "run_id": pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), [run_id]).cast(pa.string()),
    }
    return pa.Table.from_pydict(cols, schema=SCORES)


def generate(root: Path, n_models: int, n_concepts: int, scale: int = 1) -> dict:
    """Write the scores table; `scale` divides every layer's width (smoke runs)."""
    from neurolens.store.layout import Store

    store = Store(root)
    rng = np.random.default_rng(0)
    rows, models = 0, []
    for m in range(n_models):
        n_layers, width = SHAPES[m % len(SHAPES)]
        width //= scale
        model = f"model-{m:02d}-{n_layers}L"
        models.append(model)
        for c in range(n_concepts):
            run_id = f"bench-{m:02d}-{c:02d}"
            t = _scores_table(rng, n_layers, width, run_id)
            store.write_partition("scores", {"model": model, "concept": f"concept-{c:02d}"}, t,
                                  key=run_id, run_id=run_id)
            rows += t.num_rows
    return {"models": models, "rows": rows}


def _du(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _time_query(root: Path, name: str, params: dict, reps: int) -> dict:
    from neurolens.queries import execute, get, open_store
    from neurolens.queries.runner import bind

    q = get(name)
    bound = bind(q, params)
    setup, query, n_rows = [], [], 0
    for _ in range(reps):
        t0 = time.perf_counter()
        con = open_store(root)
        t1 = time.perf_counter()
        df = execute(con, q.body, bound, what=name)
        t2 = time.perf_counter()
        con.close()
        setup.append(t1 - t0)
        query.append(t2 - t1)
        n_rows = df.height
    med = statistics.median
    return {"query": name, "params": params, "rows_out": n_rows, "reps": reps,
            "setup_s": med(setup), "query_s": med(query),
            "total_s": med([a + b for a, b in zip(setup, query)]),
            "query_min_s": min(query), "query_max_s": max(query)}


def run(smoke: bool = False) -> dict:
    import duckdb
    import polars as pl

    n_models, n_concepts, scale, reps = (2, 2, 64, 3) if smoke else (10, 14, 1, 7)
    tmp = Path(tempfile.mkdtemp(prefix="nl-bench-queries-"))
    root = tmp / "store"
    try:
        t0 = time.perf_counter()
        info = generate(root, n_models, n_concepts, scale)
        gen_s = time.perf_counter() - t0
        size = _du(root / "scores")
        model = info["models"][0]
        results = [
            _time_query(root, "top_neurons", {"model": model, "concept": "concept-01", "k": 20}, reps),
            _time_query(root, "layer_profile", {"model": model, "concept": "concept-01"}, reps),
            _time_query(root, "layer_profile", {"model": model}, reps),
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {
        "benchmark": "queries",
        "smoke": smoke,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "versions": {"duckdb": duckdb.__version__, "polars": pl.__version__, "pyarrow": pa.__version__,
                     "numpy": np.__version__},
        "store": {"models": n_models, "concepts": n_concepts, "partitions": n_models * n_concepts,
                  "score_rows": info["rows"], "scores_bytes_on_disk": size,
                  "scores_mib_on_disk": round(size / 2**20, 1), "generate_s": round(gen_s, 2)},
        "results": results,
        "all_under_1s": all(r["total_s"] < 1.0 for r in results),
    }
    return out


def markdown(res: dict) -> str:
    s = res["store"]
    lines = [
        f"Store: {s['score_rows']:,} score rows in {s['partitions']} partitions "
        f"({s['models']} models × {s['concepts']} concepts), {s['scores_mib_on_disk']} MiB on disk; "
        f"generated in {s['generate_s']} s.",
        "",
        "| query | params | rows out | setup (median s) | query (median s) | total (median s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in res["results"]:
        p = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        lines.append(f"| {r['query']} | {p} | {r['rows_out']} | {r['setup_s']:.3f} | {r['query_s']:.3f} "
                     f"| {r['total_s']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks import common

    return common.main("queries", run, markdown, argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
