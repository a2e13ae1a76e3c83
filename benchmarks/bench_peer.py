"""Benchmark: the same job done with TransformerLens (the peer) and with NeuroLens.

The job: mean-pooled MLP activations of every layer of a randomly initialised GPT-2-small
(12 x 3072 neurons) over 2,000 examples of 24 tokens, then a rank-based AUROC per neuron.

* peer: TransformerLens 3.x ``HookedTransformer`` built from GPT-2-small dims (seeded random
  init), ``run_with_cache(tokens, names_filter=...)`` on ``blocks.{l}.mlp.hook_post`` of every
  layer under ``torch.no_grad()``, mean over tokens, AUROC from ``scipy.stats.rankdata``
  (average ranks) per layer. Token ids are fed directly as a [B, 24] tensor. Called as its
  users call it, so it computes the logits too (the unembedding, which the job never needs).
* peerstop: the same with ``stop_at_layer=n_layers`` (every block, no final norm and no
  unembedding): the fastest way TransformerLens offers to do the job, and the fair peer.
* NeuroLens: ``registry.load`` of a seeded random GPT-2 checkpoint with the same dims,
  ``pooled_activations`` over every layer (texts that tokenize to the same ids) and
  ``ScoreAccumulator`` (AUROC plus every other statistic), fp32 and bf16 compute.
* bare: ``model.transformer(input_ids)`` of the NeuroLens model, no hooks (the limit): the
  model as ``registry.load`` gives it, its layers on the same kernels (``engine/runtime/fast.py``).
* plain: the same checkpoint as a user of transformers loads it (``AutoModel``), no hooks:
  torch's default kernels, for context (what the kernels of ``engine/runtime/fast.py`` buy).
* run / rundef: the user's path, the whole ``neurolens run --probes FILE`` (CLI entry point,
  in the job's process) on the same texts written as a probe file, once with
  ``--no-importance`` (the peer's job: extraction of every MLP neuron, pooled, and every
  score) and once as run by default (importance on); its time is what the runs row records,
  ``seconds_extract + seconds_score`` (load excluded), its memory the process's peak. Every
  example carries a target word, so the importance of the default run is that of an LM
  (the target probability, taken in the extraction pass).
* The Llama case (``llama-*`` jobs, ``NEUROLENS_BENCH_LLAMA=1`` or the full size): a
  random-init ``LlamaForCausalLM`` with SmolLM2-135M's dimensions (30 layers, 576 wide,
  1,536 gated neurons per layer), TransformerLens's ``HookedTransformer`` built from the same
  weights (``hf_model=``), NeuroLens's run, and the bare forward.

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
            jobs=("peer-float32", "peerstop-float32", "run-float32", "rundef-float32", "bare-float32", "plain-float32",
                  "peergrad-float32",
                  "neurolens-float32", "neurolens-bfloat16", "bare-bfloat16"))
SMOKE = dict(model=common.GPT2_TINY, n_words=400, n_examples=64, n_tokens=24, batch_size=32, reps=1,
             jobs=("peer-float32", "peerstop-float32", "neurolens-float32", "run-float32", "rundef-float32"))
#: SmolLM2-135M's dimensions (random init), and a tiny one for the smoke size
SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, rms_norm_eps=1e-5,
               rope_theta=100000.0, tie_word_embeddings=True)
LLAMA_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=512, max_position_embeddings=128, rms_norm_eps=1e-5,
                  tie_word_embeddings=True)
LLAMA_JOBS = ("llama_peer-float32", "llama_peerstop-float32", "llama_run-float32", "llama_rundef-float32",
              "llama_bare-float32")


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
             dtype: str = "float32", grad: bool = False, stop: bool = False):
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
    _peer_extract(job, net, ids, labels, dev, batch_size, grad=grad, stop=stop)


def _peer_extract(job, net, ids, labels, dev, batch_size: int, *, grad: bool = False, stop: bool = False
                  ) -> None:
    """The peer's job, timed from `job.ready()`: run_with_cache on every MLP post site,
    mean-pooled, then AUROC per neuron; `stop`: return after the last block (no unembedding)."""
    import torch

    tokens = torch.from_numpy(ids).to(dev)
    names = [f"blocks.{l}.mlp.hook_post" for l in range(net.cfg.n_layers)]
    wanted = set(names)
    stop_at = net.cfg.n_layers if stop else None
    job.ready()
    pooled: dict[str, list] = {n: [] for n in names}
    with torch.set_grad_enabled(grad):
        for s in range(0, len(ids), batch_size):
            _, cache = net.run_with_cache(tokens[s:s + batch_size], names_filter=lambda n: n in wanted,
                                         stop_at_layer=stop_at)
            for n in names:
                pooled[n].append(cache[n].mean(dim=1).detach())
            del cache
    aucs = [rank_auroc(torch.cat(pooled[n]), labels) for n in names]
    job.done(tokens=int(ids.size), neurons=int(sum(a.shape[0] for a in aucs)), device=common.device_name(dev))


def neurolens_job(job, ckpt: str, n_words: int, n_examples: int, n_tokens: int, batch_size: int,
                  dtype: str = "float32", check: bool = False):
    import numpy as np

    import transformers.models.gpt2.modeling_gpt2  # noqa: F401  (imports, as the peer's, before the baseline)

    from neurolens.engine.models import registry
    from neurolens.engine.runtime.extract import pooled_activations
    from neurolens.numerics import ScoreAccumulator

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


def probe_file(path: Path, ids, labels, n_words: int) -> Path:
    """The benchmark's texts as a probe file: the same tokens, a group per 10 examples, and
    a target word on every example (so an LM's confidence is its target probability)."""
    import json

    words = common.vocabulary(n_words)
    side = {1: [], 0: []}
    for i, row in enumerate(ids):
        side[int(labels[i])].append({"text": " ".join(words[t] for t in row), "group": f"g{i % 10}",
                                     "target": words[len(common.SPECIALS) + 20 + i % 50]})
    path.write_text(json.dumps({"concept": "bench", "positive": side[1], "negative": side[0]}))
    return path


def run_job(job, ckpt: str, probes: str, out: str, importance: bool, dtype: str = "float32", **_):
    """`neurolens run` as a user types it, timed as its runs row records it."""
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401  (imports, as the peer's, before the baseline)

    from neurolens.cli import main as cli_main
    from neurolens.store.duck import connect

    job.imported()
    job.ready()
    args = ["run", "--model", ckpt, "--probes", probes, "--out", out, "--quiet", "--no-report",
            "--dtype", dtype] + ([] if importance else ["--no-importance"])
    rc = cli_main(args)
    job.done()
    if rc:
        raise RuntimeError(f"neurolens run exited {rc}")
    con = connect(Path(out) / "store")
    cur = con.execute("select seconds_extract, seconds_score, tokens, device from runs where status = 'done'")
    row = dict(zip([d[0] for d in cur.description], cur.fetchone()))
    job.info.update(seconds=row["seconds_extract"] + row["seconds_score"], tokens=int(row["tokens"]),
                    seconds_extract=row["seconds_extract"], seconds_score=row["seconds_score"],
                    device=row["device"])


def make_llama_checkpoint(out: Path, dims: dict, n_words: int) -> Path:
    """A seeded random LlamaForCausalLM with the given dims and the word-level tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    common.make_gpt2_checkpoint(out, **common.GPT2_TINY, n_words=n_words)   # the tokenizer
    for f in ("model.safetensors", "config.json", "generation_config.json"):
        (out / f).unlink(missing_ok=True)
    torch.manual_seed(0)
    cfg = LlamaConfig(**dims, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                      architectures=["LlamaForCausalLM"])
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def llama_peer_job(job, ckpt: str, n_words: int, n_examples: int, n_tokens: int, batch_size: int,
                   dtype: str = "float32", stop: bool = False):
    """TransformerLens on the same Llama weights (hf_model + a config from its dims)."""
    import torch
    import transformer_lens.loading_from_pretrained as lp
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import LlamaForCausalLM

    job.imported()
    dev = _device()
    hf = LlamaForCausalLM.from_pretrained(ckpt, torch_dtype=getattr(torch, dtype))
    c = hf.config
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size, d_head=c.hidden_size // c.num_attention_heads, n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings,
        eps=c.rms_norm_eps, d_vocab=c.vocab_size, act_fn="silu",
        normalization_type="RMS", positional_embedding_type="rotary", rotary_adjacent_pairs=False,
        rotary_dim=c.hidden_size // c.num_attention_heads, final_rms=True, gated_mlp=True,
        n_key_value_heads=None if c.num_key_value_heads == c.num_attention_heads else c.num_key_value_heads,
        rotary_base=lp._get_rope_theta(c),
        device=dev, dtype=getattr(torch, dtype), original_architecture="LlamaForCausalLM")
    state = lp.convert_llama_weights(hf, cfg)
    del hf
    net = HookedTransformer(cfg)
    net.load_state_dict(state, strict=False)
    net.eval()
    del state
    ids, labels = common.token_ids(n_examples, n_tokens, n_words)
    _peer_extract(job, net, ids, labels, dev, batch_size, stop=stop)


def bare_job(job, ckpt: str, n_words: int, n_examples: int, n_tokens: int, batch_size: int,
             dtype: str = "float32"):
    import torch
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401

    from neurolens.engine.models import registry

    job.imported()
    adapter = registry.load(ckpt, device="auto", dtype=dtype)
    ids, _ = common.token_ids(n_examples, n_tokens, n_words)
    tokens = torch.from_numpy(ids).to(adapter.device)
    base = adapter.model.transformer if hasattr(adapter.model, "transformer") else adapter.model.model
    job.ready()
    with torch.inference_mode():
        for s in range(0, n_examples, batch_size):
            base(input_ids=tokens[s:s + batch_size])
    job.done(tokens=int(ids.size), device=common.device_name(adapter.device))


def plain_job(job, ckpt: str, n_words: int, n_examples: int, n_tokens: int, batch_size: int,
              dtype: str = "float32"):
    """The checkpoint's base model as transformers loads it: torch's own kernels, no hooks."""
    import torch
    from transformers import AutoModel

    job.imported()
    dev = _device()
    model = AutoModel.from_pretrained(ckpt, torch_dtype=getattr(torch, dtype)).eval().to(dev)
    ids, _ = common.token_ids(n_examples, n_tokens, n_words)
    tokens = torch.from_numpy(ids).to(dev)
    job.ready()
    with torch.inference_mode():
        for s in range(0, n_examples, batch_size):
            model(input_ids=tokens[s:s + batch_size])
    job.done(tokens=int(ids.size), device=common.device_name(dev))


# -- the benchmark -----------------------------------------------------------------------

def have_peer() -> str | None:
    """None when TransformerLens can be used, else why not."""
    if importlib.util.find_spec("transformer_lens") is None:
        return "transformer_lens is not installed (.venv/bin/pip install -c constraints.txt -e '.[peer]')"
    return None


def run(smoke: bool = False) -> dict:
    cfg = SMOKE if smoke else FULL
    reps = int(os.environ.get("NEUROLENS_BENCH_REPS", cfg["reps"]))
    skip = have_peer()
    wanted = os.environ.get("NEUROLENS_BENCH_JOBS", ",".join(cfg["jobs"])).split(",")
    if not smoke or os.environ.get("NEUROLENS_BENCH_LLAMA"):
        wanted += [j for j in LLAMA_JOBS if j not in wanted]
    if os.environ.get("NEUROLENS_BENCH_LLAMA") == "0":
        wanted = [j for j in wanted if not j.startswith("llama")]
    jobs = [j for j in wanted if not (skip and "peer" in j)]
    common_kw = dict(n_words=cfg["n_words"], n_examples=cfg["n_examples"], n_tokens=cfg["n_tokens"],
                     batch_size=cfg["batch_size"])
    tmp = Path(tempfile.mkdtemp(prefix="nl-bench-peer-"))
    runs: dict[str, list[dict]] = {j: [] for j in jobs}
    try:
        ckpt = str(common.make_gpt2_checkpoint(tmp / "gpt2-random", **cfg["model"], n_words=cfg["n_words"]))
        llama = None
        if any(j.startswith("llama") for j in jobs):
            llama = str(make_llama_checkpoint(tmp / "llama-random", LLAMA_TINY if smoke else SMOLLM2,
                                              cfg["n_words"]))
        ids, labels = common.token_ids(cfg["n_examples"], cfg["n_tokens"], cfg["n_words"])
        probes = str(probe_file(tmp / "bench-probes.json", ids, labels, cfg["n_words"]))
        for r in range(reps):
            for j in (jobs if r % 2 == 0 else jobs[::-1]):
                who, dtype = j.split("-")
                here = llama if who.startswith("llama_") else ckpt
                who = who.removeprefix("llama_")
                if who in ("run", "rundef"):
                    out = tmp / f"out-{j}-{r}"
                    res = common.measure_job(f"{MODULE}:run_job", ckpt=here, probes=probes, out=str(out),
                                             importance=who == "rundef", dtype=dtype)
                    shutil.rmtree(out, ignore_errors=True)
                elif j.startswith("llama_peer"):
                    res = common.measure_job(f"{MODULE}:llama_peer_job", ckpt=here, dtype=dtype,
                                             stop=who == "peerstop", **common_kw)
                elif who in ("peer", "peergrad", "peerstop"):  # peergrad: as called, autograd on
                    res = common.measure_job(f"{MODULE}:peer_job", model=cfg["model"], dtype=dtype,
                                             grad=who == "peergrad", stop=who == "peerstop", **common_kw)
                elif who == "neurolens":
                    res = common.measure_job(f"{MODULE}:neurolens_job", ckpt=ckpt, dtype=dtype,
                                             check=smoke and r == 0, **common_kw)
                elif who == "plain":
                    res = common.measure_job(f"{MODULE}:plain_job", ckpt=here, dtype=dtype, **common_kw)
                else:
                    res = common.measure_job(f"{MODULE}:bare_job", ckpt=here, dtype=dtype, **common_kw)
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
    for pre in ("", "llama_"):     # the user's path beside the peer and the bare forward
        pr, bare = rows.get(f"{pre}peer-float32"), rows.get(f"{pre}bare-float32")
        for who in ("run", "rundef"):
            x = rows.get(f"{pre}{who}-float32")
            if x is None:
                continue
            if rows.get(f"{pre}peerstop-float32"):
                ratios[f"{pre}{who}_vs_peerstop"] = tps[f"{pre}{who}-float32"] / tps[f"{pre}peerstop-float32"]
            if pr:
                ratios[f"{pre}{who}_vs_peer"] = tps[f"{pre}{who}-float32"] / tps[f"{pre}peer-float32"]
                ratios[f"{pre}{who}_peak_total_vs_peer"] = x["peak_rss_mb"] / pr["peak_rss_mb"]
                ratios[f"{pre}{who}_peak_delta_vs_peer"] = x["peak_delta_mb"] / pr["peak_delta_mb"]
            if bare:
                ratios[f"{pre}{who}_vs_bare"] = tps[f"{pre}{who}-float32"] / tps[f"{pre}bare-float32"]
            pg = rows.get(f"{pre}peergrad-float32")
            if pg:   # the peer as run_with_cache is called by default (autograd on)
                ratios[f"{pre}{who}_peak_total_vs_peergrad"] = x["peak_rss_mb"] / pg["peak_rss_mb"]
            if rows.get(f"{pre}plain-float32"):
                ratios[f"{pre}{who}_vs_plain"] = tps[f"{pre}{who}-float32"] / tps[f"{pre}plain-float32"]
    checks = [x.get("auc_max_abs_diff_vs_rank_auroc") for rs in runs.values() for x in rs]
    checks = [c for c in checks if c is not None]
    m = cfg["model"]
    targets = {
        "throughput_float32_vs_peer >= 1.25": _ge(ratios.get("throughput_float32_vs_peer"), TARGETS["float32"]),
        "throughput_bfloat16_vs_peer >= 2": _ge(ratios.get("throughput_bfloat16_vs_peer"), TARGETS["bfloat16"]),
        "throughput_float32_vs_bare_float32 >= 0.9": _ge(ratios.get("throughput_float32_vs_bare_float32"),
                                                         TARGETS["bare"]),
        "peak_delta_float32_vs_peer <= 0.35": _ge(TARGETS["memory"], ratios.get("peak_delta_float32_vs_peer")),
        "run_vs_peer >= 1.2": _ge(ratios.get("run_vs_peer"), 1.2),
        "run_vs_peerstop >= 1.2": _ge(ratios.get("run_vs_peerstop"), 1.2),
        "run_vs_bare >= 0.9": _ge(ratios.get("run_vs_bare"), 0.9),
        "run_peak_total_vs_peer <= 0.35": _ge(0.35, ratios.get("run_peak_total_vs_peer")),
        "run_peak_total_vs_peergrad <= 0.35": _ge(0.35, ratios.get("run_peak_total_vs_peergrad")),
        "rundef_vs_peer >= 0.8": _ge(ratios.get("rundef_vs_peer"), 0.8),
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
          "peerstop-float32": "TransformerLens the same, stop_at_layer=n_layers (no unembedding; fp32, no_grad)",
          "neurolens-float32": "NeuroLens pooled_activations + ScoreAccumulator (fp32)",
          "neurolens-bfloat16": "NeuroLens pooled_activations + ScoreAccumulator (bf16)",
          "bare-float32": "bare forward, no hooks (fp32)", "bare-bfloat16": "bare forward, no hooks (bf16)",
          "plain-float32": "transformers' own forward as a user loads it, no hooks (fp32)",
          "run-float32": "`neurolens run --no-importance` (fp32; the peer's job)",
          "rundef-float32": "`neurolens run` as by default (fp32; importance on)",
          "llama_peer-float32": "Llama (SmolLM2 dims): TransformerLens run_with_cache + rank AUROC",
          "llama_peerstop-float32": "Llama: TransformerLens the same, stop_at_layer=n_layers",
          "llama_run-float32": "Llama: `neurolens run --no-importance`",
          "llama_rundef-float32": "Llama: `neurolens run` (importance on)",
          "llama_bare-float32": "Llama: bare forward, no hooks"}


def markdown(r: dict) -> str:
    s = r["sizes"]
    head = (f"Peer comparison: {s['n_layer']} layers x {s['neurons'] // s['n_layer']} neurons, "
            f"{s['n_examples']} x {s['tokens_per_example']} tokens, median of {r['reps']} fresh processes")
    if r["skipped"]:
        head += f"\n\npeer skipped: {r['skip_reason']}"
    rows = []
    for j, x in r["rows"].items():
        peer = r["rows"].get("llama_peer-float32" if j.startswith("llama") else "peer-float32")
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
