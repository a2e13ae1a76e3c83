"""The Ray executor against the in-process sweep on the same pairs, and the named queries
over a Delta store on S3 (a local SeaweedFS server) against the same store on local disk.

Full size: MiniLM × 4 concepts with validation (ablation). Smoke: the planted GPT-2 × 1
concept, 2 layers. The Ray cluster is started before timing (its start is reported apart);
each sweep writes to a fresh store. The in-process and Ray sweeps into local stores run twice,
in alternating order (``NEUROLENS_BENCH_SWEEP_REPS``), and their medians are compared; the
sweep into S3 runs once. Query times are medians of interleaved repetitions,
each opening the store afresh (the Delta log read included).

    python -m benchmarks --only distributed [--smoke]
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common

CONCEPTS = ["royalty", "negation", "past_tense", "sentiment"]   # the headline four, as `make sweep`


def _queries(model: str, concept: str) -> dict[str, dict]:
    return {"top_neurons": {"model": model, "concept": concept}, "layer_profile": {"model": model},
            "depth_profile": {"model": model}, "concept_overlap": {"model": model}, "run_summary": {}}


def run(smoke: bool) -> dict:
    import neurolens as nl

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from distributed_fixtures import BUCKET, weed_server

    from neurolens.executors import init_ray

    tmp = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    if smoke:
        from neurolens.engine.planted.build import build_planted

        model = str(build_planted("gpt2", tmp / "gpt2").path)
        concepts, kw = ["royalty"], dict(layers=[1, 2], top_k=3, importance=False)
    else:
        model, concepts, kw = "minilm", CONCEPTS, {}
    kw.update(report=False, progress=False, device="cpu", ablate=True)
    out: dict = {"machine": common.machine(), "model": model, "concepts": concepts}
    with weed_server(tmp / "weed") as (_, env):
        os.environ.update(env)
        t0 = time.perf_counter()
        init_ray(num_cpus=os.cpu_count())
        out["ray_start_s"] = time.perf_counter() - t0
        import ray

        # the driver's own imports, paid by whichever sweep came first, are paid before timing
        import neurolens.pipeline  # noqa: F401
        import neurolens.sweeps  # noqa: F401
        from neurolens.engine.models import registry

        registry.resolve(model)

        def timed_sweep(where: str, executor: str) -> float:
            t0 = time.perf_counter()
            nl.sweep([model], concepts, out=where, executor=executor, **kw)
            return time.perf_counter() - t0

        # in-process and Ray alternate their order over the repetitions (a 2-core VM drifts
        # by several percent over minutes); each sweep writes to a fresh store
        reps = int(os.environ.get("NEUROLENS_BENCH_SWEEP_REPS", "1" if smoke else "2"))
        t_in, t_ray = [], []
        for r in range(reps):
            order = [("inprocess", t_in), ("ray", t_ray)]
            for executor, acc in (order if r % 2 == 0 else order[::-1]):
                acc.append(timed_sweep(str(tmp / f"{executor}-{r}"), executor))
        s3_out = f"s3://{BUCKET}/bench"
        t_ray_s3 = timed_sweep(s3_out, "ray")
        m_in, m_ray = common.median(t_in), common.median(t_ray)
        out["sweep"] = {"inprocess_local_s": m_in, "ray_local_s": m_ray, "ray_s3_s": t_ray_s3,
                        "inprocess_local_runs_s": t_in, "ray_local_runs_s": t_ray,
                        "ray_over_inprocess": m_ray / m_in, "ray_s3_over_inprocess": t_ray_s3 / m_in}
        name = os.path.basename(model.rstrip("/"))
        reps = 3 if smoke else 7
        q = {}
        for qname, params in _queries(name, concepts[0]).items():
            jobs = {"local": lambda p=params, n=qname: nl.Store(str(tmp / "inprocess-0")).query(n, **p),
                    "s3": lambda p=params, n=qname: nl.Store(s3_out).query(n, **p)}
            times = common.interleaved(jobs, reps)
            med = {k: common.median(v) for k, v in times.items()}
            q[qname] = {**{f"{k}_s": v for k, v in med.items()}, "s3_over_local": med["s3"] / med["local"]}
        out["queries"] = q
        out["queries_worst_s3_over_local"] = max(v["s3_over_local"] for v in q.values())
        ray.shutdown()
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run("--smoke" in sys.argv), indent=2))
