"""Benchmark: the default sweep end to end, as a user runs it.

Contender: ``neurolens sweep --models minilm --concepts all --ablate`` (= ``make sweep``: every
built-in text concept on the embedded MiniLM: probes, extraction with importance, scoring,
validation by ablation, report set) into a fresh output folder: the cold run.
``NEUROLENS_BENCH_SWEEP_MODELS=minilm,smollm2`` names the models (both embedded ones, once
the decoder is in the registry). Baseline: the same command again on the same folder: the
resumed run, which finds every partition complete and re-renders only the report set.
Wall time includes process start-up (what a user waits for); peak RSS is the CLI process's.

    python benchmarks/bench_sweep.py [--smoke]     # or: python -m benchmarks --only sweep

Smoke size: MiniLM x one concept, layers 0 and 1, no importance, no ablation, no report set.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common

NAME = "sweep"
FULL = dict(args=["--models", os.environ.get("NEUROLENS_BENCH_SWEEP_MODELS", "minilm"), "--concepts", "all",
                  "--ablate"], reps=1, timeout=3600)
SMOKE = dict(args=["--models", "minilm", "--concepts", "royalty", "--layers", "0", "1", "--no-report",
                  "--no-importance", "--no-ablate"],
             reps=1, timeout=600)

# when the CLI cannot import (a command module missing), the same sweep through the pipeline
_FALLBACK = r"""
import sys
from neurolens.commands.sweep import add_parser
import argparse
p = argparse.ArgumentParser(); sub = p.add_subparsers(dest="command"); add_parser(sub)
from neurolens.commands import sweep
sys.exit(sweep.run(p.parse_args(["sweep", *sys.argv[1:]])))
"""


def _cmd(args: list[str], out: Path, fallback: bool) -> list[str]:
    tail = [*args, "--out", str(out), "--quiet"]
    if fallback:
        return [sys.executable, "-c", _FALLBACK, *tail]
    return [sys.executable, "-m", "neurolens", "sweep", *tail]


def _run(args, out, env, timeout, fallback):
    r = common.run_measured(_cmd(args, out, fallback), timeout=timeout, env=env)
    if r["status"] != 0:
        tail = "\n".join((r["stderr"] or "").strip().splitlines()[-15:])
        raise RuntimeError(f"sweep exited with status {r['status']}"
                           f"{' (timed out)' if r['timed_out'] else ''}:\n{tail}")
    return r


def _cli_imports(env) -> bool:
    r = common.run_measured([sys.executable, "-c", "import neurolens.cli as c; c.build_parser()"],
                            timeout=300, env=env)
    return r["status"] == 0


def run(smoke: bool = False) -> dict:
    import numpy as np  # noqa: F401  (json of numpy scalars below)

    from neurolens.probes import list_concepts

    cfg = SMOKE if smoke else FULL
    reps = int(os.environ.get("NEUROLENS_BENCH_REPS", cfg["reps"]))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(common.ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("NEUROLENS_OUT", None)
    fallback = not _cli_imports(env)
    cold, warm = [], []
    tmp = Path(tempfile.mkdtemp(prefix="nl-bench-sweep-"))
    store_mb = 0.0
    try:
        for r in range(reps):
            out = tmp / f"out-{r}"
            cold.append(_run(cfg["args"], out, env, cfg["timeout"], fallback))
            warm.append(_run(cfg["args"], out, env, cfg["timeout"], fallback))
            store_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = [c.name for c in list_concepts() if c.modality == "text"]
    concepts = text if "all" in cfg["args"] else [cfg["args"][cfg["args"].index("--concepts") + 1]]
    c = common.summarize([x["wall_s"] for x in cold])
    w = common.summarize([x["wall_s"] for x in warm])
    return {
        "benchmark": NAME, "smoke": smoke,
        "command": "neurolens sweep " + " ".join(cfg["args"]) + " --out DIR --quiet",
        "via": "python -c (commands.sweep.run; the CLI did not import)" if fallback else "python -m neurolens",
        "sizes": {"model": "minilm", "concepts": len(concepts), "concept_names": concepts,
                  "output_mib": round(store_mb, 1)},
        "reps": reps,
        "contender": {"name": "cold sweep (fresh output folder)", **c,
                      "seconds_per_concept": c["median_s"] / len(concepts),
                      "peak_rss_mb": common.median([x["peak_rss_mb"] for x in cold])},
        "baseline": {"name": "resumed sweep (same folder: every stage reused)", **w,
                     "peak_rss_mb": common.median([x["peak_rss_mb"] for x in warm])},
        "ratio": c["median_s"] / w["median_s"],
        "ratio_definition": "cold wall / resumed wall",
        "machine": common.machine(), "versions": common.versions("transformers", "duckdb", "pyarrow"),
    }


def markdown(r: dict) -> str:
    s, c, b = r["sizes"], r["contender"], r["baseline"]
    head = (f"Sweep end to end: `{r['command']}` (minilm x {s['concepts']} concepts), "
            f"median of {r['reps']}, wall including process start-up")
    rows = [[c["name"], c["median_s"], c["peak_rss_mb"], c["seconds_per_concept"]],
            [b["name"], b["median_s"], b["peak_rss_mb"], None]]
    return head + "\n\n" + common.markdown_table(["run", "wall s", "peak RSS MB", "s / concept"], rows)


def main(argv=None) -> int:
    return common.main(NAME, run, markdown, argv, doc=__doc__, smoke_help="one concept, two layers, no report")


if __name__ == "__main__":
    sys.exit(main())
