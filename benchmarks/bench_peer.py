"""Benchmark: the same job done with TransformerLens (the peer) and with NeuroLens.

The job: mean-pooled MLP activations of every layer of a randomly initialised GPT-2-small
(12 x 3072 neurons) over 2,000 examples of 24 tokens, then a rank-based AUROC per neuron.

* peer: TransformerLens 3.x ``HookedTransformer`` built from GPT-2-small dims (seeded random
  init), ``run_with_cache(tokens, names_filter=...)`` on ``blocks.{l}.mlp.hook_post`` of every
  layer under ``torch.no_grad()``, mean over tokens, AUROC from ``scipy.stats.rankdata``
  (average ranks) per layer. Token ids are fed directly as a [B, 24] tensor.
* NeuroLens: ``registry.load`` of a seeded random GPT-2 checkpoint with the same dims,
  ``pooled_activations`` over every layer (texts that tokenize to the same ids) and
  ``ScoreAccumulator`` (AUROC plus every other statistic), fp32 and bf16 compute.
* bare: ``model.transformer(input_ids)`` of the NeuroLens model, no hooks (a reference).

Every job runs in its own fresh process; jobs are interleaved over the repetitions and
medians are reported. Throughput = tokens / seconds of the job (process start-up, imports
and model construction excluded). Memory = peak RSS of the job's process minus its RSS
after imports (model construction included), and the total peak RSS.

    python benchmarks/bench_peer.py [--smoke]     # or: python -m benchmarks --only peer
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common

NAME = "peer"
MODULE = "benchmarks.bench_peer"
TARGETS = {"float32": 1.25, "bfloat16": 2.0, "bare": 0.9, "memory": 0.35}
FULL = dict(model=common.GPT2_SMALL, n_words=4000, n_examples=2000, n_tokens=24, batch_size=32, reps=3,
            jobs=("peer-float32", "peergrad-float32", "neurolens-float32", "neurolens-bfloat16",
                  "bare-float32", "bare-bfloat16"))
SMOKE = dict(model=common.GPT2_TINY, n_words=400, n_examples=64, n_tokens=24, batch_size=32, reps=1,
             jobs=("peer-float32", "neurolens-float32"))


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def rank_auroc(acts, labels):
    """AUROC per column from average ranks (Mann-Whitney U), as a TransformerLens user writes it."""
    import numpy as np
    from scipy.stats import rankdata

    x = acts.float().cpu().numpy()
    pos = np.asarray(labels) == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    r = rankdata(x, axis=0)
    return (r[pos].sum(axis=0) - n1 * (n1 + 1) / 2) / (n1 * n0)


# -- jobs (each runs in its own process, see common.measure_job) -----------------------------

def peer_job(job, model: dict, n_words: int, n_examples: int, n_tokens: int, batch_size: int,
             dtype: str = "float32", grad: bool = False):
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    job.imported()
    dev = _device()
    ids, labels = common.token_ids(n_examples, n_tokens, n_words)
    cfg = HookedTransformerConfig(
        n_layers=model["n_layer"], d_model=model["n_embd"], n_heads=model["n_head"],
        d_head=model["n_embd"] // model["n_head"], d_mlp=4 * model["n_embd"], d_vocab=model["vocab_size"],
        n_ctx=model["n_positions"], act_fn="gelu_new", normalization_type="LN", seed=0, device=dev,
        dtype=getattr(torch, dtype))
    net = HookedTransformer(cfg)
    net.eval()
    tokens = torch.from_numpy(ids).to(dev)
    names = [f"blocks.{l}.mlp.hook_post" for l in range(cfg.n_layers)]
    wanted = set(names)
    job.ready()
    pooled: dict[str, list] = {n: [] for n in names}
    with torch.set_grad_enabled(grad):
        for s in range(0, n_examples, batch_size):
            _, cache = net.run_with_cache(tokens[s:s + batch_size], names_filter=lambda n: n in wanted)
            for n in names:
                pooled[n].append(cache[n].mean(dim=1).detach())
            del cache
    aucs = [rank_auroc(torch.cat(pooled[n]), labels) for n in names]
    job.done(tokens=int(ids.size), neurons=int(sum(a.shape[0] for a in aucs)), device=common.device_name(dev))


def neurolens_job(job, ckpt: str, n_words: int, n_examples: int, n_tokens: int, batch_size: int,
                  dtype: str = "float32", check: bool = False):
    import numpy as np

    import transformers.models.gpt2.modeling_gpt2  # noqa: F401  (imports, as the peer's, before the baseline)

    from neurolens.engine import registry
    from neurolens.engine.extract import pooled_activations
    from neurolens.kernels import ScoreAccumulator

    job.imported()
    adapter = registry.load(ckpt, device="auto", dtype=dtype)
    ids, labels = common.token_ids(n_examples, n_tokens, n_words)
    examples = common.examples_from_ids(ids, labels, n_words)
    layers = list(range(adapter.n_layers))
    ScoreAccumulator().add(0, np.zeros((4, 2), np.float16), np.array([0, 1, 0, 1]))  # JIT outside
    job.ready()
    rows, bufs, tokens = pooled_activations(adapter, examples, layers, pooling="mean", batch_size=batch_size)
    acc = ScoreAccumulator()
    y = labels[rows]
    for l in layers:
        acc.add(l, bufs[l], y)
    table = acc.finalize()
    job.done(tokens=int(tokens), neurons=int(table["auc"].shape[0]), device=common.device_name(adapter.device))
    if check:  # not timed: the peer's AUROC on our activations gives our AUROC
        peer = np.concatenate([rank_auroc(bufs[l], y) for l in layers])
        job.info["auc_max_abs_diff_vs_rank_auroc"] = float(np.max(np.abs(peer - table["auc"])))


def bare_job(job, ckpt: str, n_words: int, n_examples: int, n_tokens: int, batch_size: int,
             dtype: str = "float32"):
    import torch
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401

    from neurolens.engine import registry

    job.imported()
    adapter = registry.load(ckpt, device="auto", dtype=dtype)
    ids, _ = common.token_ids(n_examples, n_tokens, n_words)
    tokens = torch.from_numpy(ids).to(adapter.device)
    base = adapter.model.transformer
    job.ready()
    with torch.inference_mode():
        for s in range(0, n_examples, batch_size):
            base(input_ids=tokens[s:s + batch_size])
    job.done(tokens=int(ids.size), device=common.device_name(adapter.device))


# -- the benchmark -----------------------------------------------------------------------

def have_peer() -> str | None:
    """None when TransformerLens can be used, else why not."""
    if importlib.util.find_spec("transformer_lens") is None:
        return "transformer_lens is not installed (pip install -c constraints.txt '.[peer]')"
    return None


def run(smoke: bool = False) -> dict:
    cfg = SMOKE if smoke else FULL
    reps = int(os.environ.get("NEUROLENS_BENCH_REPS", cfg["reps"]))
    skip = have_peer()
    wanted = os.environ.get("NEUROLENS_BENCH_JOBS", ",".join(cfg["jobs"])).split(",")
    jobs = [j for j in wanted if not (skip and j.startswith("peer"))]
    common_kw = dict(n_words=cfg["n_words"], n_examples=cfg["n_examples"], n_tokens=cfg["n_tokens"],
                     batch_size=cfg["batch_size"])
    tmp = Path(tempfile.mkdtemp(prefix="nl-bench-peer-"))
    runs: dict[str, list[dict]] = {j: [] for j in jobs}
    try:
        ckpt = str(common.make_gpt2_checkpoint(tmp / "gpt2-random", **cfg["model"], n_words=cfg["n_words"]))
        for r in range(reps):
            for j in (jobs if r % 2 == 0 else jobs[::-1]):
                who, dtype = j.split("-")
                if who in ("peer", "peergrad"):  # peergrad: run_with_cache as called, autograd on
                    res = common.measure_job(f"{MODULE}:peer_job", model=cfg["model"], dtype=dtype,
                                             grad=who == "peergrad", **common_kw)
                elif who == "neurolens":
                    res = common.measure_job(f"{MODULE}:neurolens_job", ckpt=ckpt, dtype=dtype,
                                             check=smoke and r == 0, **common_kw)
                else:
                    res = common.measure_job(f"{MODULE}:bare_job", ckpt=ckpt, dtype=dtype, **common_kw)
                runs[j].append(res)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = {}
    for j, rs in runs.items():
        tok = rs[0]["tokens"]
        rows[j] = {"seconds": common.summarize([x["seconds"] for x in rs], tok),
                   "tokens": tok, "device": rs[0]["device"],
                   "peak_delta_mb": common.median([x["peak_delta_mb"] for x in rs]),
                   "peak_rss_mb": common.median([x["peak_rss_mb"] for x in rs]),
                   "after_imports_mb": common.median([x["after_imports_mb"] for x in rs]),
                   "runs": rs}
    tps = {j: r["seconds"]["tokens_per_s"] for j, r in rows.items()}
    ratios: dict[str, float | None] = {}
    peer = rows.get("peer-float32")
    for d in ("float32", "bfloat16"):
        nl = f"neurolens-{d}"
        if nl in rows:
            ratios[f"throughput_{d}_vs_peer"] = tps[nl] / tps["peer-float32"] if peer else None
            if f"bare-{d}" in rows:
                ratios[f"throughput_{d}_vs_bare_{d}"] = tps[nl] / tps[f"bare-{d}"]
            ratios[f"peak_delta_{d}_vs_peer"] = (rows[nl]["peak_delta_mb"] / peer["peak_delta_mb"]) if peer else None
            ratios[f"peak_total_{d}_vs_peer"] = (rows[nl]["peak_rss_mb"] / peer["peak_rss_mb"]) if peer else None
            pg = rows.get("peergrad-float32")
            if pg:  # the peer as run_with_cache is called by default (autograd on)
                ratios[f"throughput_{d}_vs_peergrad"] = tps[nl] / tps["peergrad-float32"]
                ratios[f"peak_delta_{d}_vs_peergrad"] = rows[nl]["peak_delta_mb"] / pg["peak_delta_mb"]
                ratios[f"peak_total_{d}_vs_peergrad"] = rows[nl]["peak_rss_mb"] / pg["peak_rss_mb"]
    checks = [x.get("auc_max_abs_diff_vs_rank_auroc") for rs in runs.values() for x in rs]
    checks = [c for c in checks if c is not None]
    m = cfg["model"]
    targets = {
        "throughput_float32_vs_peer >= 1.25": _ge(ratios.get("throughput_float32_vs_peer"), TARGETS["float32"]),
        "throughput_bfloat16_vs_peer >= 2": _ge(ratios.get("throughput_bfloat16_vs_peer"), TARGETS["bfloat16"]),
        "throughput_float32_vs_bare_float32 >= 0.9": _ge(ratios.get("throughput_float32_vs_bare_float32"),
                                                         TARGETS["bare"]),
        "peak_delta_float32_vs_peer <= 0.35": _ge(TARGETS["memory"], ratios.get("peak_delta_float32_vs_peer")),
    }
    return {
        "benchmark": NAME, "smoke": smoke,
        "skipped": bool(skip), "skip_reason": skip,
        "sizes": {"n_layer": m["n_layer"], "n_embd": m["n_embd"], "neurons": m["n_layer"] * 4 * m["n_embd"],
                  "vocab_size": m["vocab_size"], "n_examples": cfg["n_examples"],
                  "tokens_per_example": cfg["n_tokens"], "tokens": cfg["n_examples"] * cfg["n_tokens"],
                  "batch_size": cfg["batch_size"]},
        "reps": reps,
        "memory_definition": "peak_delta_mb = the job process's peak RSS (kernel ru_maxrss) minus its RSS "
                             "after imports, model construction included; peak_rss_mb = total peak",
        "throughput_definition": "tokens / seconds of pooling + AUROC, after model construction",
        "rows": rows, "ratios": ratios, "ratio": ratios.get("throughput_float32_vs_peer"),
        "targets": targets,
        "auc_check_max_abs_diff": max(checks) if checks else None,
        "machine": common.machine(), "versions": common.versions("transformers", "transformer_lens", "scipy"),
    }


def _ge(a, b):
    return None if a is None or b is None else bool(a >= b)


LABELS = {"peer-float32": "TransformerLens run_with_cache + rank AUROC (fp32, under no_grad)",
          "peergrad-float32": "TransformerLens run_with_cache + rank AUROC (fp32, autograd on: its default)",
          "neurolens-float32": "NeuroLens pooled_activations + ScoreAccumulator (fp32)",
          "neurolens-bfloat16": "NeuroLens pooled_activations + ScoreAccumulator (bf16)",
          "bare-float32": "bare forward, no hooks (fp32)", "bare-bfloat16": "bare forward, no hooks (bf16)"}


def markdown(r: dict) -> str:
    s = r["sizes"]
    head = (f"Peer comparison: {s['n_layer']} layers x {s['neurons'] // s['n_layer']} neurons, "
            f"{s['n_examples']} x {s['tokens_per_example']} tokens, median of {r['reps']} fresh processes")
    if r["skipped"]:
        head += f"\n\npeer skipped: {r['skip_reason']}"
    peer = r["rows"].get("peer-float32")
    rows = []
    for j, x in r["rows"].items():
        tps = x["seconds"]["tokens_per_s"]
        rows.append([LABELS.get(j, j), x["seconds"]["median_s"], tps,
                     f"{tps / peer['seconds']['tokens_per_s']:.2f}x" if peer else None,
                     x["peak_delta_mb"], x["peak_rss_mb"],
                     f"{x['peak_delta_mb'] / peer['peak_delta_mb']:.2f}x" if peer else None])
    return head + "\n\n" + common.markdown_table(
        ["job", "s", "tokens/s", "vs peer", "peak - imports MB", "peak RSS MB", "mem vs peer"], rows)


def main(argv=None) -> int:
    return common.main(NAME, run, markdown, argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
