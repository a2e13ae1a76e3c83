"""Benchmark: a corpus scan of every MLP neuron beside the bare forward and the peer.

The job: excerpts of 64 tokens of a seeded random GPT-2-small (12 x 3072 neurons), word-level
synthetic text, batch 16.

* scan: ``scan_states`` (engine/runtime/scan.py) over every layer: top-k (k=20) excerpts with
  windows, histograms, moments, interval samples, folded in on the device (on CPU by the fused
  numba pass of numerics/_scan_numba.py); the one pass a ``neurolens scan`` makes (table writing
  excluded: it is per layer, once, after the pass).
* bare: the same batches through the model, no hooks (the limit).
* peer: TransformerLens ``run_with_cache`` on every ``blocks.L.mlp.hook_post`` of the same
  dims, keeping a per-neuron running top-k of excerpt maxima (the Neuroscope approach:
  max over tokens, concatenate with the running top-k, ``topk``), under ``torch.no_grad()``.
* memory: the scan's peak RSS over its imports at two corpus sizes (FULL: 100k and 1M tokens),
  which must not grow: the state is bounded by k x neurons.

Each job runs in a fresh process (common.measure_job); throughput = tokens / seconds of the pass.

    python benchmarks/bench_scan.py [--smoke]     # or: python -m benchmarks --only scan
    (full size on 2 CPU cores: about 40 min, half of it the 1M-token scan; give the runner a
    ``--timeout`` to match, e.g. ``python -m benchmarks --only scan --timeout 36000``)
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common

NAME = "scan"
MODULE = "benchmarks.bench_scan"
FULL = dict(model=common.GPT2_SMALL, n_words=4000, length=64, batch_size=16, tokens=100_000,
            big=1_000_000, reps=2)
SMOKE = dict(model=common.GPT2_TINY, n_words=400, length=32, batch_size=16, tokens=4_096, big=16_384, reps=1)


def _excerpts(n_tokens: int, length: int, n_words: int):
    import numpy as np

    from neurolens.probes.corpora import Excerpts

    e = max(1, n_tokens // length)
    ids = np.random.default_rng(0).integers(len(common.SPECIALS), len(common.SPECIALS) + n_words, size=(e, length))
    return Excerpts("bench", ids, np.full(e, length), np.full((e, length), -1, np.int32),
                    np.array([], dtype=object), np.full((e, length), -1, np.int16), [], "bench")


def scan_job(job, ckpt: str, tokens: int, length: int, batch_size: int, n_words: int):
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401

    from neurolens.engine.models import registry
    from neurolens.engine.runtime.scan import ScanSettings, calibrate, scan_states

    job.imported()
    a = registry.load(ckpt, device="auto")
    ex = _excerpts(tokens, length, n_words)
    layers = list(range(a.n_layers))
    s = ScanSettings(batch_size=batch_size)
    edges = calibrate(a, ex, layers, s)
    job.ready()
    st = scan_states(a, ex, layers, edges, s)
    job.done(tokens=int(ex.n_tokens), neurons=sum(x.n_neurons for x in st.values()),
             device=common.device_name(a.device))


def bare_job(job, ckpt: str, tokens: int, length: int, batch_size: int, n_words: int):
    import numpy as np
    import torch

    import transformers.models.gpt2.modeling_gpt2  # noqa: F401

    from neurolens.engine.models import registry
    from neurolens.engine.runtime.scan import _batch

    job.imported()
    a = registry.load(ckpt, device="auto")
    ex = _excerpts(tokens, length, n_words)
    job.ready()
    with torch.inference_mode():
        for s in range(0, len(ex), batch_size):
            b, _ = _batch(a, ex, np.arange(s, min(s + batch_size, len(ex))))
            a.base()(**b.inputs)
    job.done(tokens=int(ex.n_tokens), device=common.device_name(a.device))


def peer_job(job, model: dict, tokens: int, length: int, batch_size: int, n_words: int, k: int = 20):
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    job.imported()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = HookedTransformerConfig(
        n_layers=model["n_layer"], d_model=model["n_embd"], n_heads=model["n_head"],
        d_head=model["n_embd"] // model["n_head"], d_mlp=4 * model["n_embd"], d_vocab=model["vocab_size"],
        n_ctx=model["n_positions"], act_fn="gelu_new", normalization_type="LN", seed=0, device=dev)
    net = HookedTransformer(cfg).eval()
    ids = torch.from_numpy(_excerpts(tokens, length, n_words).ids).to(dev)
    names = [f"blocks.{l}.mlp.hook_post" for l in range(cfg.n_layers)]
    wanted = set(names)
    job.ready()
    top = {n: (torch.full((k, cfg.d_mlp), -torch.inf, device=dev),
               torch.full((k, cfg.d_mlp), -1, dtype=torch.long, device=dev)) for n in names}
    with torch.no_grad():
        for s in range(0, len(ids), batch_size):
            _, cache = net.run_with_cache(ids[s:s + batch_size], names_filter=lambda n: n in wanted)
            ex = torch.arange(s, min(s + batch_size, len(ids)), device=dev)
            for n in names:
                mx = cache[n].amax(dim=1)                                   # [B, N]
                v, i = top[n]
                allv = torch.cat([v, mx])
                alli = torch.cat([i, ex.unsqueeze(1).expand_as(mx)])
                t = allv.topk(k, dim=0)
                top[n] = (t.values, torch.gather(alli, 0, t.indices))
            del cache
    job.done(tokens=int(ids.numel()), device=common.device_name(dev))


def _timeout(tokens: int) -> float:
    """A job's limit: a hang, not a slow machine (GPT-2-small's forward on 2 shared CPU cores
    runs at 100-400 tokens/s, TransformerLens's at a quarter of that)."""
    return max(1800.0, tokens / 25)


def have_peer() -> str | None:
    return None if importlib.util.find_spec("transformer_lens") else "transformer_lens is not installed (extra: peer)"


def run(smoke: bool = False) -> dict:
    cfg = SMOKE if smoke else FULL
    skip = have_peer()
    tmp = Path(tempfile.mkdtemp(prefix="nl-bench-scan-"))
    kw = dict(length=cfg["length"], batch_size=cfg["batch_size"], n_words=cfg["n_words"])
    rows: dict[str, list[dict]] = {"scan": [], "bare": [], "peer": [], "scan_big": []}
    try:
        ckpt = str(common.make_gpt2_checkpoint(tmp / "gpt2-random", **cfg["model"], n_words=cfg["n_words"]))
        for r in range(cfg["reps"]):
            order = ["scan", "bare", "peer"] if r % 2 == 0 else ["peer", "bare", "scan"]
            for j in order:
                if j == "peer" and skip:
                    continue
                if j == "peer":
                    rows[j].append(common.measure_job(f"{MODULE}:peer_job", timeout=_timeout(cfg["tokens"]),
                                                      model=cfg["model"], tokens=cfg["tokens"], **kw))
                else:
                    rows[j].append(common.measure_job(f"{MODULE}:{j}_job", timeout=_timeout(cfg["tokens"]),
                                                      ckpt=ckpt, tokens=cfg["tokens"], **kw))
        rows["scan_big"].append(common.measure_job(f"{MODULE}:scan_job", timeout=_timeout(cfg["big"]),
                                                   ckpt=ckpt, tokens=cfg["big"], **kw))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tps = {j: common.median([x["tokens"] / x["seconds"] for x in rs]) for j, rs in rows.items() if rs}
    mem = {j: common.median([x["peak_delta_mb"] for x in rs]) for j, rs in rows.items() if rs}
    ratios = {"scan_vs_bare": tps["scan"] / tps["bare"],
              "scan_vs_peer": tps["scan"] / tps["peer"] if "peer" in tps else None,
              "peak_delta_big_vs_small": mem["scan_big"] / mem["scan"] if mem.get("scan") else None}
    ok = lambda x, t: None if x is None else bool(x >= t)  # noqa: E731
    return {"benchmark": NAME, "smoke": smoke, "skipped_peer": skip, "machine": common.machine(),
            "versions": common.versions("torch", "transformers", "transformer_lens"),
            "sizes": {**cfg["model"], "tokens": cfg["tokens"], "big_tokens": cfg["big"], "length": cfg["length"],
                      "batch_size": cfg["batch_size"]},
            "tokens_per_s": tps, "peak_delta_mb": mem, "ratios": ratios,
            "targets": {"scan_vs_bare >= 0.85": ok(ratios["scan_vs_bare"], 0.85),
                        "scan_vs_peer >= 2.5": ok(ratios["scan_vs_peer"], 2.5),
                        "peak_delta_big_vs_small <= 1.1": None if ratios["peak_delta_big_vs_small"] is None
                        else bool(ratios["peak_delta_big_vs_small"] <= 1.1)},
            "runs": rows}


def markdown(r: dict) -> str:
    rows = [[j, f"{t:,.0f}", f"{r['peak_delta_mb'].get(j, 0):.0f}"] for j, t in r["tokens_per_s"].items()]
    rows += [[k, f"{v:.2f}" if v is not None else "–", ""] for k, v in r["ratios"].items()]
    return common.markdown_table(["job / ratio", "tokens/s", "peak over imports (MB)"], rows)


if __name__ == "__main__":
    sys.exit(common.main(NAME, run, markdown, doc=__doc__))
