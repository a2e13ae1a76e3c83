"""Run the benchmark suite: ``python -m benchmarks [--smoke] [--only NAME,...]``.

Every ``benchmarks/bench_<name>.py`` is a benchmark with ``run(smoke: bool) -> dict``.
Each runs in its own process (so peak memory is per benchmark); its result goes to
``benchmarks/results/<name>.json`` (``<name>.smoke.json`` for ``--smoke``), with the runner's
wall time and the process's peak RSS added, and a markdown table of all is printed.
The exit status is non-zero only when a benchmark breaks (an exception, a crash, a hang
past ``--timeout``, no result), never because a figure misses its target.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from pathlib import Path

from benchmarks import common

HERE = Path(__file__).resolve().parent


def discover() -> dict[str, str]:
    """name -> module, for every bench_<name>.py here."""
    return {p.stem[len("bench_"):]: f"benchmarks.{p.stem}" for p in sorted(HERE.glob("bench_*.py"))}


# -- the child: one benchmark in its own process ---------------------------------------------

def headline(name: str, r: dict) -> str:
    """One line saying what a result shows."""
    try:
        if r.get("skipped") and not r.get("rows"):
            return f"skipped: {r.get('skip_reason')}"
        if name == "extract":
            return "; ".join(f"{x['dtype']}: {x['ratio']:.2f}x bare-forward wall" for x in r["rows"])
        if name == "peer":
            q = r["ratios"]
            parts = []
            for d in ("float32", "bfloat16"):
                if q.get(f"throughput_{d}_vs_peer") is not None:
                    parts.append(f"{d} {q[f'throughput_{d}_vs_peer']:.2f}x peer tokens/s")
                if q.get(f"throughput_{d}_vs_bare_{d}") is not None:
                    parts.append(f"{d} {q[f'throughput_{d}_vs_bare_{d}']:.2f}x bare")
            if q.get("peak_delta_float32_vs_peer") is not None:
                parts.append(f"peak memory {q['peak_delta_float32_vs_peer']:.2f}x peer")
            if r.get("skipped"):
                parts.append(f"peer skipped: {r.get('skip_reason')}")
            return "; ".join(parts)
        if name == "scan":
            q = r["ratios"]
            f = lambda x: "–" if x is None else f"{x:.2f}x"  # noqa: E731
            big = (f"; over {r['sizes']['big_tokens']:,} tokens {f(q.get('cli_big_vs_bare'))} bare forward, "
                   f"peak memory {f(q['peak_delta_big_vs_small'])} of the small run's"
                   if r["sizes"].get("big_tokens") else "")
            return (f"neurolens scan over {r['sizes']['tokens']:,} tokens {f(q['cli_vs_bare'])} bare forward, "
                    f"{f(q['cli_vs_peer'])} TransformerLens running top-k (its pass alone {f(q['scan_vs_bare'])}, "
                    f"{f(q['scan_vs_peer'])})" + big)
        if name == "distributed":
            w = r["sweep"]
            return (f"Ray {w['ray_over_inprocess']:.2f}x in-process (medians of "
                    f"{len(w.get('ray_local_runs_s', [0]))}), into S3 {w['ray_s3_over_inprocess']:.2f}x; named "
                    f"queries over S3 at most {r['queries_worst_s3_over_local']:.2f}x local")
        if name == "scoring":
            return (f"{r['sizes']['neurons']:,} neurons in {r['contender']['median_s']:.3f} s; "
                    f"{r['ratio']:.0f}x per-neuron roc_auc_score")
        if name == "queries":
            worst = max(x["total_s"] for x in r["results"])
            return f"{r['store']['score_rows']:,} score rows; slowest named query {worst:.3f} s"
        if name == "ablation":
            return (f"{r['sizes']['n_ablations']} single-neuron ablations: batched "
                    f"{r['median_s']['batched']:.2f} s vs one at a time {r['median_s']['one_each']:.2f} s")
        if name == "reports":
            return (f"{r['pages']} pages in {r['median_wall_s']:.1f} s "
                    f"({r['per_page_wall_s']:.2f} s/page), largest {r['max_report_mib']:.1f} MiB")
        if name == "run_ablation":
            return (f"ablate {r['ratio']:.2f}x extract+score (target 3x); its fp32 products alone "
                    f"{r['floor_ratio']:.2f}x")
        if name == "confidence":
            return "; ".join(f"{x['rows']} rows: chunked {x['ratio']:.2f}x full log-softmax"
                             for x in r["rows"]) + f" ({r['sizes']['vocab']:,}-token head)"
        if name == "sweep":
            return (f"minilm x {r['sizes']['concepts']} concepts: cold {r['contender']['median_s']:.1f} s, "
                    f"resumed {r['baseline']['median_s']:.1f} s")
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        pass
    if isinstance(r.get("ratio"), (int, float)):
        return f"ratio {r['ratio']:.2f}x"
    return ""


def child(module: str, name: str, smoke: bool, out: str) -> int:
    """Import the module, run it, write {"result", "markdown", "headline"} to `out`."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    mod = importlib.import_module(module)
    result = mod.run(smoke=smoke)
    if not isinstance(result, dict):
        raise TypeError(f"{module}.run returned {type(result).__name__}, not a dict")
    result.setdefault("benchmark", name)
    result.setdefault("smoke", smoke)
    if "machine" not in result:
        result["machine"] = common.machine()
    if "versions" not in result:
        result["versions"] = common.versions()
    md = None
    for fn in ("markdown", "to_markdown"):
        if callable(getattr(mod, fn, None)):
            md = getattr(mod, fn)(result)
            break
    Path(out).write_text(json.dumps({"result": result, "markdown": md, "headline": headline(name, result)},
                                    default=common._json_default))
    return 0


# -- the parent -----------------------------------------------------------------------------

def run_one(name: str, module: str, *, smoke: bool, results_dir: Path | None, timeout: float) -> dict:
    """Run one benchmark in a child process; returns a summary row (status ok/failed)."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f"nl-bench-{name}-", suffix=".json")
    os.close(fd)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(common.ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "benchmarks", "--child", module, "--name", name, "--write", tmp]
    if smoke:
        cmd.append("--smoke")
    row = {"name": name, "status": "failed", "headline": "", "wall_s": None, "peak_rss_mb": None,
           "ratio": None, "path": None, "markdown": None, "error": None}
    try:
        r = common.run_measured(cmd, timeout=timeout, env=env)
        row["wall_s"], row["peak_rss_mb"] = r["wall_s"], r["peak_rss_mb"]
        text = Path(tmp).read_text() if Path(tmp).stat().st_size else ""
        if r["status"] != 0 or not text:
            why = f"timed out after {timeout:.0f} s" if r["timed_out"] else f"exit status {r['status']}"
            tail = "\n".join((r["stderr"] or "").strip().splitlines()[-20:])
            row["error"] = f"{why}" + (f"\n{tail}" if tail else "")
            return row
        payload = json.loads(text)
        res = payload["result"]
        res["runner"] = {"wall_s": round(r["wall_s"], 2), "peak_rss_mb": r["peak_rss_mb"],
                         "command": f"python -m benchmarks --only {name}" + (" --smoke" if smoke else "")}
        path = common.write_result(res, common.results_path(name, smoke, results_dir))
        row.update(status="skipped" if res.get("skipped") and not res.get("rows") else "ok",
                   headline=payload.get("headline") or "", ratio=res.get("ratio"), path=str(path),
                   markdown=payload.get("markdown"))
        return row
    except (OSError, ValueError, KeyError) as e:
        row["error"] = f"{type(e).__name__}: {e}"
        return row
    finally:
        Path(tmp).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: the whole suite in about a minute")
    ap.add_argument("--only", help="comma-separated benchmark names (default: all)")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    ap.add_argument("--results", type=Path, default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per benchmark before it counts as broken (default 900 smoke, 7200 full)")
    ap.add_argument("--module", action="append", default=[], metavar="NAME=MODULE",
                    help="also run a benchmark module from elsewhere on the path")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    ap.add_argument("--write", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child(a.child, a.name, a.smoke, a.write)

    benches = discover()
    for spec in a.module:
        n, _, m = spec.partition("=")
        benches[n] = m
    if a.list:
        print("\n".join(f"{n}\t{m}" for n, m in benches.items()))
        return 0
    if a.only:
        names = [n.strip() for n in a.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in benches]
        if unknown:
            print(f"unknown benchmark {unknown[0]!r}; known: {', '.join(benches)}", file=sys.stderr)
            return 2
        benches = {n: benches[n] for n in names}
    timeout = a.timeout or (900 if a.smoke else 7200)
    rows = []
    for name, module in benches.items():
        print(f"== {name} ({'smoke' if a.smoke else 'full'}) ...", flush=True)
        row = run_one(name, module, smoke=a.smoke, results_dir=a.results, timeout=timeout)
        rows.append(row)
        if row["markdown"]:
            print(row["markdown"] + "\n", flush=True)
        if row["status"] == "failed":
            print(f"!! {name} FAILED: {row['error']}\n", flush=True)
        else:
            print(f"-> {row['path']} ({row['wall_s']:.1f} s)\n", flush=True)
    m = common.machine()
    print(f"## Benchmarks ({'smoke' if a.smoke else 'full'} sizes) on {m['processor']}, "
          f"{m['cpu_count']} CPUs, load {m.get('load_avg_1_5_15')}\n")
    print(common.markdown_table(
        ["benchmark", "status", "headline", "ratio", "wall s", "peak RSS MB"],
        [[r["name"], r["status"], r["headline"] or ((r["error"] or "").splitlines() or [""])[0],
          None if r["ratio"] is None else f"{r['ratio']:.2f}x", r["wall_s"], r["peak_rss_mb"]] for r in rows],
        align=["---", "---", "---", "---:", "---:", "---:"]))
    failed = [r["name"] for r in rows if r["status"] == "failed"]
    if failed:
        print(f"\nbroken: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:  # a child's exception: the traceback is its stderr, the status says broken
        traceback.print_exc()
        sys.exit(1)
