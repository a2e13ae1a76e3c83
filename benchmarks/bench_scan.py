"""Benchmark: a corpus scan of every MLP neuron beside the bare forward and the peer.

The job: a seeded random GPT-2-small (12 x 3072 neurons) over a plain-text corpus file of
word-level synthetic text, cut into excerpts of 64 tokens, batch 16. Every job reads the same
file and cuts it the same way (``probes/corpora.py``), so all of them see the same tokens.

* cli: the user's path, the whole ``neurolens scan --model CKPT --corpus FILE --tokens N``
  command (CLI entry point, in the job's process, imports excluded): model load, tokenising,
  bin calibration, the scan of every layer, the tables, logit effects, the corpus evidence.
  This is the headline.
* scan: ``scan_states`` (engine/runtime/scan.py) over every layer, model load and tables
  excluded: the pass inside the command, a diagnostic for where the command's time goes.
* bare: the same batches through the model, no hooks (the limit).
* peer: TransformerLens ``run_with_cache`` on every ``blocks.L.mlp.hook_post`` of the same
  dims, keeping a per-neuron running top-k of excerpt maxima (the Neuroscope approach:
  max over tokens, concatenate with the running top-k, ``topk``), under ``torch.no_grad()``;
  its model construction and tokenising are excluded (the loop only). Called as the
  Neuroscope-style scripts call it, so it computes the logits too (the unembedding: 50,257 x 768
  per token, about 40 % of its time here), which a scan never needs.
* peer_stop: the same loop with ``stop_at_layer=n_layers``: every block, no final norm and no
  unembedding, the fastest way TransformerLens offers to do the job. The cli / peer_stop ratio
  is the one that gives the peer every advantage.
* cli_big: the same command over 10x the tokens (FULL: 1M), once. Its peak RSS over imports
  beside the cli job's must not grow (the state is bounded by k x neurons), and its throughput
  beside the bare forward's is the command's ratio once its fixed costs (load, calibration,
  logit effects, tables: none grows with the corpus) are spread over a corpus of that size;
  the bare forward's tokens/s does not depend on the corpus's length (the same excerpts, the
  same batches), so it is timed at the small size only. ``NEUROLENS_BENCH_SCAN_BIG=0`` leaves
  this job out (about half the run).

Each job runs in a fresh process (common.measure_job); throughput = tokens / seconds of the
job's measured part; jobs alternate their order over the repetitions; medians are reported.

    python benchmarks/bench_scan.py [--smoke]     # or: python -m benchmarks --only scan
    (full size on 2 CPU cores: about 23-28 min, 11-14 of them the 1M-token command; give the runner a
    ``--timeout`` to match, e.g. ``python -m benchmarks --only scan --timeout 36000``)
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

NAME = "scan"
MODULE = "benchmarks.bench_scan"
FULL = dict(model=common.GPT2_SMALL, n_words=4000, length=64, batch_size=16, tokens=100_000,
            big=1_000_000, reps=2)
SMOKE = dict(model=common.GPT2_TINY, n_words=400, length=32, batch_size=16, tokens=4_096, big=16_384, reps=1)


def write_corpus(path: Path, n_tokens: int, n_words: int, *, words_per_line: int = 200) -> Path:
    """A plain-text corpus of random vocabulary words, one document per line, a little longer
    than `n_tokens` (a separator token follows every document)."""
    import numpy as np

    vocab = np.array(common.vocabulary(n_words)[len(common.SPECIALS):], dtype=object)
    ids = np.random.default_rng(0).integers(0, len(vocab), size=int(n_tokens * 1.05) + words_per_line)
    lines = (" ".join(vocab[ids[i:i + words_per_line]]) for i in range(0, len(ids), words_per_line))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _excerpts(ckpt: str, corpus: str, tokens: int, length: int):
    from transformers import AutoTokenizer

    from neurolens.probes.corpora import cut, load_corpus

    return cut(load_corpus(corpus), AutoTokenizer.from_pretrained(ckpt), length=length, max_tokens=tokens)


def cli_job(job, ckpt: str, corpus: str, tokens: int, length: int, batch_size: int, out: str):
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401

    from neurolens import cli

    job.imported()
    job.ready()
    rc = cli.main(["scan", "--model", ckpt, "--corpus", corpus, "--tokens", str(tokens), "--length",
                   str(length), "--batch-size", str(batch_size), "--out", out, "--quiet"])
    job.done()
    if rc != 0:
        raise RuntimeError(f"neurolens scan exited with status {rc}")
    job.info["tokens"] = int(_excerpts(ckpt, corpus, tokens, length).n_tokens)


def scan_job(job, ckpt: str, corpus: str, tokens: int, length: int, batch_size: int):
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401

    from neurolens.engine.models import registry
    from neurolens.engine.runtime.scan import ScanSettings, calibrate, scan_states

    job.imported()
    a = registry.load(ckpt, device="auto")
    ex = _excerpts(ckpt, corpus, tokens, length)
    layers = list(range(a.n_layers))
    s = ScanSettings(batch_size=batch_size)
    edges = calibrate(a, ex, layers, s)
    job.ready()
    st = scan_states(a, ex, layers, edges, s)
    job.done(tokens=int(ex.n_tokens), neurons=sum(x.n_neurons for x in st.values()),
             device=common.device_name(a.device))


def bare_job(job, ckpt: str, corpus: str, tokens: int, length: int, batch_size: int):
    import numpy as np
    import torch

    import transformers.models.gpt2.modeling_gpt2  # noqa: F401

    from neurolens.engine.models import registry
    from neurolens.engine.runtime.scan import _batch

    job.imported()
    a = registry.load(ckpt, device="auto")
    ex = _excerpts(ckpt, corpus, tokens, length)
    job.ready()
    with torch.inference_mode():
        for s in range(0, len(ex), batch_size):
            b, _ = _batch(a, ex, np.arange(s, min(s + batch_size, len(ex))))
            a.base()(**b.inputs)
    job.done(tokens=int(ex.n_tokens), device=common.device_name(a.device))


def peer_job(job, model: dict, ckpt: str, corpus: str, tokens: int, length: int, batch_size: int, k: int = 20,
             stop: bool = False):
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    job.imported()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = HookedTransformerConfig(
        n_layers=model["n_layer"], d_model=model["n_embd"], n_heads=model["n_head"],
        d_head=model["n_embd"] // model["n_head"], d_mlp=4 * model["n_embd"], d_vocab=model["vocab_size"],
        n_ctx=model["n_positions"], act_fn="gelu_new", normalization_type="LN", seed=0, device=dev)
    net = HookedTransformer(cfg).eval()
    ids = torch.from_numpy(_excerpts(ckpt, corpus, tokens, length).ids).to(dev)
    names = [f"blocks.{l}.mlp.hook_post" for l in range(cfg.n_layers)]
    wanted = set(names)
    stop_at = cfg.n_layers if stop else None     # all blocks, then return before ln_final / unembed
    job.ready()
    top = {n: (torch.full((k, cfg.d_mlp), -torch.inf, device=dev),
               torch.full((k, cfg.d_mlp), -1, dtype=torch.long, device=dev)) for n in names}
    with torch.no_grad():
        for s in range(0, len(ids), batch_size):
            _, cache = net.run_with_cache(ids[s:s + batch_size], names_filter=lambda n: n in wanted,
                                         stop_at_layer=stop_at)
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
    big = os.environ.get("NEUROLENS_BENCH_SCAN_BIG", "1") != "0"
    tmp = Path(tempfile.mkdtemp(prefix="nl-bench-scan-"))
    kw = dict(length=cfg["length"], batch_size=cfg["batch_size"])
    rows: dict[str, list[dict]] = {"cli": [], "scan": [], "bare": [], "peer": [], "peer_stop": [], "cli_big": []}
    try:
        ckpt = str(common.make_gpt2_checkpoint(tmp / "gpt2-random", **cfg["model"], n_words=cfg["n_words"]))
        corpus = str(write_corpus(tmp / "corpus.txt", max(cfg["tokens"], cfg["big"] if big else 0), cfg["n_words"]))
        small = dict(ckpt=ckpt, corpus=corpus, tokens=cfg["tokens"], **kw)
        for r in range(cfg["reps"]):
            order = ["cli", "scan", "bare", "peer", "peer_stop"]
            for j in (order if r % 2 == 0 else order[::-1]):
                if j.startswith("peer") and skip:
                    continue
                extra = ({"model": cfg["model"], "stop": j == "peer_stop"} if j.startswith("peer")
                         else {"out": str(tmp / f"store-{r}")} if j == "cli" else {})
                rows[j].append(common.measure_job(f"{MODULE}:{j.split('_')[0]}_job",
                                                  timeout=_timeout(cfg["tokens"]), **small, **extra))
        if big:
            rows["cli_big"].append(common.measure_job(f"{MODULE}:cli_job", timeout=_timeout(cfg["big"]),
                                                      **{**small, "tokens": cfg["big"], "out": str(tmp / "store-big")}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tps = {j: common.median([x["tokens"] / x["seconds"] for x in rs]) for j, rs in rows.items() if rs}
    mem = {j: common.median([x["peak_delta_mb"] for x in rs]) for j, rs in rows.items() if rs}
    peer, peer_stop = tps.get("peer"), tps.get("peer_stop")
    ratios = {"cli_vs_bare": tps["cli"] / tps["bare"],
              "cli_vs_peer": tps["cli"] / peer if peer else None,
              "cli_vs_peer_stop": tps["cli"] / peer_stop if peer_stop else None,
              "scan_vs_bare": tps["scan"] / tps["bare"],
              "scan_vs_peer": tps["scan"] / peer if peer else None,
              "scan_vs_peer_stop": tps["scan"] / peer_stop if peer_stop else None,
              "peer_vs_bare": peer / tps["bare"] if peer else None,
              "peer_stop_vs_bare": peer_stop / tps["bare"] if peer_stop else None,
              "cli_big_vs_peer": tps["cli_big"] / peer if peer and tps.get("cli_big") else None,
              "cli_big_vs_peer_stop": tps["cli_big"] / peer_stop if peer_stop and tps.get("cli_big") else None,
              "cli_big_vs_bare": tps["cli_big"] / tps["bare"] if tps.get("cli_big") else None,
              "peak_delta_big_vs_small": mem["cli_big"] / mem["cli"] if mem.get("cli_big") else None}
    ok = lambda x, t: None if x is None else bool(x >= t)  # noqa: E731
    return {"benchmark": NAME, "smoke": smoke, "skipped_peer": skip, "machine": common.machine(),
            "versions": common.versions("torch", "transformers", "transformer_lens"),
            "sizes": {**cfg["model"], "tokens": cfg["tokens"], "big_tokens": cfg["big"] if big else None,
                      "length": cfg["length"], "batch_size": cfg["batch_size"]},
            "tokens_per_s": tps, "peak_delta_mb": mem, "ratios": ratios,
            "targets": {"cli_vs_bare >= 0.85": ok(ratios["cli_vs_bare"], 0.85),
                        "cli_big_vs_bare >= 0.85": ok(ratios["cli_big_vs_bare"], 0.85),
                        "cli_vs_peer >= 2.5": ok(ratios["cli_vs_peer"], 2.5),
                        "cli_big_vs_peer >= 2.5": ok(ratios["cli_big_vs_peer"], 2.5),
                        "cli_big_vs_peer_stop >= 2.5": ok(ratios["cli_big_vs_peer_stop"], 2.5),
                        "peak_delta_big_vs_small <= 1.1": None if ratios["peak_delta_big_vs_small"] is None
                        else bool(ratios["peak_delta_big_vs_small"] <= 1.1)},
            "runs": rows}


def markdown(r: dict) -> str:
    rows = [[j, f"{t:,.0f}", f"{r['peak_delta_mb'].get(j, 0):.0f}"] for j, t in r["tokens_per_s"].items()]
    rows += [[k, f"{v:.2f}" if v is not None else "–", ""] for k, v in r["ratios"].items()]
    return common.markdown_table(["job / ratio", "tokens/s", "peak over imports (MB)"], rows)


if __name__ == "__main__":
    sys.exit(common.main(NAME, run, markdown, doc=__doc__))
