"""A corpus scan end to end (what `neurolens scan` and `Model.scan` do): load the corpus, cut it
for the model's tokenizer, scan every neuron of the chosen layers (resumable by shard), write
the model's logit effects and the corpus evidence of every concept the store has ranked for it.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from neurolens.config import store_dir
from neurolens.errors import ConfigError
from neurolens.progress import Bars

DEFAULT_CORPUS = "wordnet"


@dataclass
class ScanResult:
    model: str
    corpus: str
    layers: list[int]
    excerpts: int
    tokens: int
    seconds: float
    scanned: list[int] = field(default_factory=list)       # layers scanned now (others were stored)
    evidence: list[str] = field(default_factory=list)      # concepts whose evidence was written
    logit_effects: bool = False
    out: Path | None = None
    forwarded: int | None = None   # tokens this call streamed (a resumed scan reads saved shards)

    @property
    def tokens_per_s(self) -> float:
        """Tokens streamed by this call per second of it: saved shards that a resumed scan
        only reads are not counted, so the rate is the model's, not the resume's."""
        done = self.tokens if self.forwarded is None else self.forwarded
        return done / self.seconds if self.seconds and done else float("nan")


def scan(adapter: Any, corpus: str = DEFAULT_CORPUS, *, tokens: int | None = None,
         layers: list[int] | None = None, out: str | None = None, k: int = 20, length: int = 64,
         batch_size: int = 16, shards: int | None = None, words: list[str] | None = None,
         bars: Bars | None = None, progress: bool | None = None, executor: str = "inprocess",
         address: str | None = None) -> ScanResult:
    """Scan every neuron of `layers` over `corpus` into the store at `out`. `executor="ray"`
    computes the shards on the Ray cluster at `address` (default: a local one), one task per
    shard; the tables equal the in-process scan's, and a scan resumes across executors."""
    from neurolens.engine.runtime.scan import ScanSettings, run_scan
    from neurolens.executors import check_executor
    from neurolens.probes.corpora import cut, load_corpus
    from neurolens.store import Store

    if tokens is not None and tokens < 1:
        raise ConfigError(f"tokens (--tokens) must be at least 1, got {tokens}")
    if k < 1 or batch_size < 1 or length < 8:
        raise ConfigError("k and batch size must be at least 1, and excerpts at least 8 tokens long")
    if adapter.modality != "text":
        from neurolens.errors import ModelError

        raise ModelError(f"{adapter.name} is a vision model: corpus scans read text")
    check_executor(executor)
    if address and executor != "ray":
        raise ConfigError("--address is for --executor ray")
    layers = adapter.check_layers(layers)
    c = load_corpus(corpus)
    ex = cut(c, adapter.processor, length=length, max_tokens=tokens)
    store = Store(store_dir(out))
    store.ensure()
    s = ScanSettings(k=k, batch_size=batch_size)
    runner = None
    if executor == "ray":
        from neurolens.executors import scan_shards_ray

        runner = scan_shards_ray(adapter, address)
    t0 = time.perf_counter()
    own = bars is None
    bars = bars or Bars(enabled=progress)
    if own:
        bars.__enter__()
    try:
        with bars.stage(f"scan {adapter.name} · {ex.corpus}", ex.n_tokens) as tick:
            r = run_scan(adapter, ex, store, layers=layers, settings=s, n_shards=shards, progress=tick,
                         runner=runner)
        secs = time.perf_counter() - t0
        lfx = write_logit_effects(adapter, store, layers)
        ev = write_evidence(store, adapter, ex, model=adapter.name, corpus=ex.corpus, words=words or [])
    finally:
        if own:
            bars.__exit__(None, None, None)
    return ScanResult(adapter.name, ex.corpus, layers, len(ex), ex.n_tokens, secs, r["layers"], ev, lfx,
                      store.root.parent, forwarded=r["tokens"])


def write_logit_effects(adapter: Any, store: Any, layers: list[int], k: int = 10) -> bool:
    """logit_effects for the layers asked (one partition per model, replaced with the union)."""
    from neurolens.engine.models.logit_effects import logit_effects
    from neurolens.engine.runtime.extract import model_sha
    from neurolens.store import SCHEMAS, read_table

    parts = {"model": adapter.name}
    msha = model_sha(adapter)
    m = store.marker("logit_effects", parts)
    have = set(m.get("layers", [])) if m and m.get("model_sha") == msha else set()
    todo = [l for l in layers if l not in have]
    if not todo:
        return bool(have)
    tables = [read_table(store, "logit_effects", parts)] if have else []
    got = {}
    for l in todo:
        g = logit_effects(adapter, l, k)
        if g is None:
            return False
        got[l] = [x.numpy() for x in g]
    ids = {l: np.concatenate([g[0], g[2]], 1) for l, g in got.items()}
    u = np.unique(np.concatenate([x.ravel() for x in ids.values()]))    # decoded once, all layers
    names = np.array(adapter.processor.batch_decode(u.reshape(-1, 1).tolist()), dtype=object)
    for l, (ti, tv, bi, bv) in got.items():
        n = ti.shape[0]
        eff = np.concatenate([tv, bv], 1)
        rank = np.concatenate([np.arange(1, k + 1), -np.arange(1, k + 1)])[None, :].repeat(n, 0)
        tables.append(pa.table({
            "layer": pa.array(np.full(ids[l].size, l, dtype=np.int32)),
            "neuron": pa.array(np.arange(n, dtype=np.int32).repeat(2 * k)),
            "rank": pa.array(rank.ravel().astype(np.int32)), "token_id": pa.array(ids[l].ravel().astype(np.int64)),
            "token": pa.array(names[np.searchsorted(u, ids[l].ravel())], pa.string()),
            "effect": pa.array(eff.ravel().astype(np.float32)),
            "run_id": pa.array(["logits-" + msha] * ids[l].size, pa.string()),
        }, schema=SCHEMAS["logit_effects"]))
    allk = sorted(have | set(todo))
    store.write_partition("logit_effects", parts, pa.concat_tables(tables), key=f"{msha}:{allk}",
                          run_id="logits-" + msha, extra={"layers": allk, "model_sha": msha})
    return True


def write_evidence(store: Any, adapter: Any, ex: Any, *, model: str, corpus: str,
                   words: list[str] | None = None, range_tokens: int = 100_000) -> list[str]:
    """corpus_evidence for every concept with ranked neurons of `model` in the store. The range
    precision of every concept is counted in one forward pass over the first `range_tokens`
    tokens (one pass per concept would cost a sweep of 36 concepts 36 passes)."""
    from neurolens.engine.labels.corpus import evidence_rows, evidence_table, range_counts_many, range_spec
    from neurolens.engine.labels.evidence import run_sql

    concepts = run_sql(store, "scanned_concepts", model=model)["concept"].to_list()
    plans = []
    for concept in concepts:
        got = evidence_rows(store, model=model, corpus=corpus, concept=concept, extra_words=words or [])
        if got is not None:
            rows, ws = got
            spec, sel = range_spec(rows, ex, ws) if adapter is not None and ex is not None else (None, {})
            plans.append((concept, rows, spec, sel))
    asked = [p for p in plans if p[3]]
    counts = range_counts_many(adapter, ex, [p[2] for p in asked], range_tokens) if asked else []
    counted = {p[0]: c for p, c in zip(asked, counts)}
    done = []
    for concept, rows, _, sel in plans:
        run_id = "evidence-" + hashlib.sha256(f"{model}:{concept}:{corpus}".encode()).hexdigest()[:12]
        t = evidence_table(rows, sel, counted.get(concept, {}), run_id)
        store.write_partition("corpus_evidence", {"model": model, "concept": concept, "corpus": corpus}, t,
                              key=f"{run_id}:{time.time_ns()}", run_id=run_id)
        done.append(concept)
    return done


def scanned_corpora(store: Any, model: str) -> list[str]:
    d = store.table_dir("neuron_stats") / f"model={model}"
    return sorted(p.name.split("=", 1)[1] for p in d.glob("corpus=*")) if d.is_dir() else []


def pick_corpus(store: Any, model: str, corpus: str | None) -> str:
    """The corpus a neuron page reads: the one named, else the only one scanned, else wordnet."""
    from neurolens.probes.corpora import corpus_name
    from neurolens.store import StoreError

    have = scanned_corpora(store, model)
    if not have:
        raise StoreError(f"{model} has not been scanned in {store.root.parent} "
                         f"(run `neurolens scan --model {model}` first)")
    if corpus is not None:
        name = corpus_name(corpus)
        if name not in have:
            raise StoreError(f"{model} has no scan of corpus {name!r} (scanned: {', '.join(have)})")
        return name
    return have[0] if len(have) == 1 else (DEFAULT_CORPUS if DEFAULT_CORPUS in have else have[0])


def scanned_layers(store: Any, model: str, corpus: str) -> dict[int, int]:
    """{layer: n_neurons} of the published scan partitions."""
    d = store.table_dir("neuron_stats") / f"model={model}" / f"corpus={corpus}"
    out = {}
    for p in sorted(d.glob("layer=*")) if d.is_dir() else []:
        m = store.marker("neuron_stats", {"model": model, "corpus": corpus, "layer": int(p.name[6:])})
        if m:
            out[int(p.name[6:])] = int(m.get("n_neurons", 0))
    return out


def model_store_name(model: str) -> str:
    """The store's name of a model, without loading it (a registry name, a path, a hub id)."""
    from neurolens.engine.models.registry import resolve

    try:
        return resolve(model).name
    except Exception:  # noqa: BLE001 - a name as stored (e.g. a checkpoint folder gone since)
        return model


def neuron_page(model: str, layer: int, neuron: int, *, corpus: str | None = None, out: str | None = None
                ) -> Path:
    """Write the page of one scanned neuron and return its path; one clear error when the
    model, corpus or layer has not been scanned or the neuron is out of range."""
    from neurolens.config import reports_dir
    from neurolens.reports.neuron import render_neuron
    from neurolens.store import Store, StoreError

    store = Store(store_dir(out))
    name = model_store_name(model)
    c = pick_corpus(store, name, corpus)
    layers = scanned_layers(store, name, c)
    if layer not in layers:
        raise StoreError(f"layer {layer} of {name} has not been scanned over {c} (scanned: "
                         f"{', '.join(map(str, sorted(layers))) or 'none'}); run `neurolens scan "
                         f"--model {model} --layers {layer}`")
    if not 0 <= neuron < layers[layer]:
        raise ConfigError(f"neuron {neuron} is out of range: layer {layer} of {name} has neurons "
                          f"0..{layers[layer] - 1}")
    return render_neuron(store.root, reports_dir(out), name, c, layer, neuron)
