"""Benchmark: extraction (hooks + on-device pooling) against a bare forward of the same model.

Contender: ``pooled_activations`` over every layer of a GPT-2-small-sized randomly
initialised checkpoint (mean pooling, fp16 buffers, forward stopped after the last layer).
Baseline: ``model.transformer(**inputs)`` on the same, pre-built batches, no hooks.
Both run in one process on the same adapter, interleaved, for fp32 and bf16 compute;
the ratio is contender wall / baseline wall (target <= 1.15). Tokenising is inside the
contender's time (it is part of extraction) and outside the baseline's.

    python benchmarks/bench_extract.py [--smoke]     # or: python -m benchmarks --only extract
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

NAME = "extract"
TARGET = 1.15
FULL = dict(model=common.GPT2_SMALL, n_words=4000, n_examples=2000, n_tokens=24, batch_size=32,
            reps=3, dtypes=("float32", "bfloat16"))
SMOKE = dict(model=common.GPT2_TINY, n_words=400, n_examples=64, n_tokens=24, batch_size=32,
             reps=2, dtypes=("float32", "bfloat16"))


def run(smoke: bool = False) -> dict:
    import torch

    from neurolens.engine.models import registry
    from neurolens.engine.runtime.extract import pooled_activations

    cfg = SMOKE if smoke else FULL
    reps = int(os.environ.get("NEUROLENS_BENCH_REPS", cfg["reps"]))
    dtypes = os.environ.get("NEUROLENS_BENCH_DTYPES", ",".join(cfg["dtypes"])).split(",")
    tmp = Path(tempfile.mkdtemp(prefix="nl-bench-extract-"))
    rows = []
    try:
        ckpt = common.make_gpt2_checkpoint(tmp / "gpt2-random", **cfg["model"], n_words=cfg["n_words"])
        ids, labels = common.token_ids(cfg["n_examples"], cfg["n_tokens"], cfg["n_words"])
        examples = common.examples_from_ids(ids, labels, cfg["n_words"])
        tokens = int(ids.size)
        dev = None
        for dtype in dtypes:
            adapter = registry.load(str(ckpt), device="auto", dtype=dtype)
            dev = adapter.device
            layers = list(range(adapter.n_layers))
            batches = [b.to(dev) for b in adapter.batches(examples, cfg["batch_size"])]
            assert sum(b.n_tokens for b in batches) == tokens, "texts must tokenize to the given ids"
            base = adapter.model.transformer

            def bare():
                with torch.inference_mode():
                    for b in batches:
                        base(**b.inputs)

            def pooled():
                return pooled_activations(adapter, examples, layers, pooling="mean",
                                          batch_size=cfg["batch_size"])

            _, bufs, n_tok = pooled()
            assert n_tok == tokens and len(bufs) == len(layers)
            times = common.interleaved({"pooled": pooled, "bare": bare}, reps, warmup=1, dev=dev)
            c, b = common.summarize(times["pooled"], tokens), common.summarize(times["bare"], tokens)
            rows.append({"dtype": dtype, "contender": c, "baseline": b,
                         "ratio": c["median_s"] / b["median_s"],
                         "meets_target": c["median_s"] / b["median_s"] <= TARGET})
            del adapter, batches, base, bufs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    m = cfg["model"]
    return {
        "benchmark": NAME, "smoke": smoke,
        "sizes": {"n_layer": m["n_layer"], "n_embd": m["n_embd"], "n_neurons_per_layer": 4 * m["n_embd"],
                  "vocab_size": m["vocab_size"], "n_examples": cfg["n_examples"],
                  "tokens_per_example": cfg["n_tokens"], "tokens": tokens, "batch_size": cfg["batch_size"]},
        "device": common.device_name(dev), "reps": reps,
        "contender": "pooled_activations over every layer (mean pooling, fp16 out)",
        "baseline": "model.transformer(**inputs), same batches, no hooks",
        "ratio_definition": "contender wall / baseline wall (lower is better)",
        "target": f"ratio <= {TARGET}",
        "rows": rows,
        "ratio": rows[0]["ratio"],
        "machine": common.machine(), "versions": common.versions("transformers"),
    }


def markdown(r: dict) -> str:
    s = r["sizes"]
    head = (f"Extraction vs bare forward: {s['n_layer']} layers x {s['n_neurons_per_layer']} neurons, "
            f"{s['n_examples']} x {s['tokens_per_example']} tokens, batch {s['batch_size']}, "
            f"{r['device']}, median of {r['reps']}")
    rows = [[x["dtype"], x["contender"]["median_s"], x["baseline"]["median_s"],
             x["contender"]["tokens_per_s"], x["baseline"]["tokens_per_s"], f"{x['ratio']:.3f}x",
             "yes" if x["meets_target"] else "no"] for x in r["rows"]]
    return head + "\n\n" + common.markdown_table(
        ["dtype", "extract s", "bare s", "extract tok/s", "bare tok/s", "ratio", f"<= {TARGET}x"], rows)


def main(argv=None) -> int:
    return common.main(NAME, run, markdown, argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
