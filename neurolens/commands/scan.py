"""`neurolens scan`: every neuron of a model over a corpus, into the store."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("scan", help="scan a corpus: top excerpts, histograms, samples of every neuron",
                       description="Stream a corpus through the model once and keep, for every neuron "
                                   "of the chosen layers, its top excerpts, interval samples, histogram "
                                   "and moments (resumable after a kill: run the same command again).")
    p.add_argument("--model", required=True, help="registry name, .gguf file, checkpoint folder, or hub id")
    p.add_argument("--corpus", default="wordnet",
                   help="wordnet (default: WordNet 3.0 glosses), or a .txt/.jsonl/.parquet file, a folder "
                        "of them, or a `datasets` save_to_disk folder")
    p.add_argument("--tokens", type=int, default=None, metavar="N", help="scan only the first N tokens")
    p.add_argument("--layers", type=int, nargs="+", metavar="L", help="layers to scan (default: all)")
    p.add_argument("--top-k", type=int, default=20, metavar="K", help="top excerpts kept per neuron")
    p.add_argument("--length", type=int, default=64, help="tokens per excerpt (default 64)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="excerpts per forward (default 16); the scan's results do not depend on it")
    p.add_argument("--shards", type=int, default=None, help="resume granularity (default ~100k tokens each)")
    p.add_argument("--words", default=None, metavar="W[,W]",
                   help="extra concept words for the corpus evidence (besides the probes' own)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="the dtype the model runs in (default float32)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--executor", default="inprocess", choices=("inprocess", "ray"),
                   help="where the shards are scanned: this process (default), or a Ray cluster, one "
                        "task per shard (see docs/scans.md)")
    p.add_argument("--address", default=None,
                   help="with --executor ray: the cluster to join (host:port or auto); "
                        "default: start a local one")
    p.add_argument("--out", default=None, help="output folder (default $NEUROLENS_OUT or ./neurolens-out)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from neurolens.engine.models import registry
    from neurolens.errors import ConfigError
    from neurolens.scans import scan

    if args.shards is not None and args.shards < 1:
        raise ConfigError(f"--shards must be at least 1, got {args.shards}")
    if args.address and args.executor != "ray":
        raise ConfigError("--address is for --executor ray")
    if args.address:
        from neurolens.executors import init_ray

        init_ray(args.address)   # a cluster that does not answer fails before the model loads
    adapter = registry.load(args.model, device=args.device, dtype=args.dtype)
    r = scan(adapter, args.corpus, tokens=args.tokens, layers=args.layers, out=args.out, k=args.top_k,
             length=args.length, batch_size=args.batch_size, shards=args.shards,
             words=[w for w in (args.words or "").split(",") if w], progress=False if args.quiet else None,
             executor=args.executor, address=args.address)
    c = Console()
    c.print(f"scanned {r.model} over {r.corpus}: {r.tokens} tokens in {r.excerpts} excerpts, layers "
            f"{r.layers[0]}..{r.layers[-1]} ({len(r.scanned)} scanned now) in {r.seconds:.1f} s "
            + (f"({r.tokens_per_s:,.0f} tokens/s over the {r.forwarded:,} tokens streamed now)"
               if r.forwarded else "(every shard was saved already)"), highlight=False, soft_wrap=True)
    if r.evidence:
        c.print(f"corpus evidence for: {', '.join(r.evidence)}", highlight=False)
    return 0
