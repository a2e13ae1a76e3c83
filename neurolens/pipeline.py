"""One model × concept through every stage: probe → extract → score → ablate → label → report.

Each stage publishes its partition atomically and is skipped when the partition for the
same inputs is already there, so a killed run resumes where it stopped.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow as pa

from neurolens.config import RunConfig, reports_dir, store_dir
from neurolens.engine.models import registry
from neurolens.engine.models.adapters.base import Adapter, ModelError
from neurolens.engine.runtime.extract import Shard, extract, layer_key, model_sha
from neurolens.engine.runtime.pooling import POOLINGS
from neurolens.score import SCORE_VERSION, TOO_FEW, inference, score_layers, write_scores
from neurolens.errors import ConfigError
from neurolens.probes import ProbeError, ProbeSet, load_probes
from neurolens.progress import Bars
from neurolens.store import SCHEMAS, Store


@dataclass
class RunResult:
    run_id: str
    model: str
    concept: str
    layers: list[int]
    top: pa.Table | None = None
    report: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    n_units: int | None = None      # units of the group-level test (groups or cells)
    note: str | None = None         # one line when no finding is possible (too few groups)


def versions() -> str:
    import importlib.metadata as md

    out = {}
    for p in ("neurolens", "torch", "transformers", "duckdb", "pyarrow", "numba"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return json.dumps(out, sort_keys=True)


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def _run_row(**kw) -> pa.Table:
    schema = SCHEMAS["runs"]
    return pa.Table.from_pylist([{f.name: kw.get(f.name) for f in schema}], schema=schema)


def check_config(cfg: RunConfig) -> None:
    """Settings out of range fail before any work (ConfigError, worded for Python and CLI)."""
    if cfg.pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling {cfg.pooling!r} (--pooling); choose from {', '.join(POOLINGS)}")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size (--batch-size) must be at least 1, got {cfg.batch_size}")
    if cfg.top_k < 1:
        raise ConfigError(f"top_k (--top-k) must be at least 1, got {cfg.top_k}")
    from neurolens.engine.causal.ablation.stage import parse_methods

    try:
        cfg.ablate_methods = parse_methods(cfg.ablate_methods)
    except ValueError as e:
        raise ConfigError(f"ablate_methods (--ablate-methods): {e}") from None


_REAPED: set[str] = set()   # stores whose dead `running` rows this process has marked


def run(cfg: RunConfig, *, adapter: Adapter | None = None, probes: ProbeSet | None = None,
        bars: Bars | None = None, shard: Shard | None = None) -> RunResult:
    """Run the pipeline for one model × concept; returns what was found."""
    check_config(cfg)
    bars = bars or Bars(enabled=False)
    shard = shard or Shard.from_env()
    if probes is None:
        if not cfg.concept and not cfg.probes:
            raise ProbeError("name a --concept or give a --probes file")
        probes = load_probes(cfg.concept, cfg.probes)
    store = Store(store_dir(cfg.out))
    store.ensure()
    if shard.main:
        store.clean_staging()  # what killed runs left; never a live run's
        if store.uri not in _REAPED:   # and their rows, once per process (a sweep runs many)
            store.reap_runs()
            _REAPED.add(store.uri)
    adapter = adapter or registry.load(cfg.model, device=cfg.device, dtype=cfg.dtype,
                                         device_map=cfg.device_map, max_memory=cfg.max_memory)
    # activations are keyed, stored and reused by the dtype the model really runs in
    cfg = replace(cfg, dtype=str(adapter.dtype).removeprefix("torch."))
    if probes.modality != adapter.modality:
        raise ModelError(f"concept {probes.concept!r} is a {probes.modality} concept but "
                         f"{adapter.name} is a {adapter.modality} model")
    layers = adapter.check_layers(cfg.layers)
    import torch

    torch.manual_seed(cfg.seed)
    run_id = shard.broadcast(new_run_id())
    msha = model_sha(adapter)
    res = RunResult(run_id, adapter.name, probes.concept, layers)
    started = dt.datetime.now(dt.timezone.utc)
    base = {"run_id": run_id, "model": adapter.name, "model_ref": adapter.ref, "model_sha": msha,
            "concept": probes.concept, "probe_sha": probes.sha, "n_pos": probes.n_pos, "n_neg": probes.n_neg,
            "layers": layers, "pooling": cfg.pooling, "device": str(adapter.device),
            "world_size": shard.world, "versions": versions(), "dtype": cfg.dtype, "started_at": started}
    # the run's lock: held for its whole life (the kernel drops it however the process
    # dies), so the next run can tell a dead `running` row from a live one
    with store.claimed(f"run-{run_id}"):
        if shard.main:
            store.write_run(_run_row(**base, status="running"), run_id)
        try:
            return _stages(cfg, adapter, probes, store, shard, bars, layers, msha, res, base)
        except BaseException:
            if shard.main:  # the run's row says what happened; its partitions stay as they were
                with contextlib.suppress(Exception):
                    store.write_run(_run_row(**base, status="failed",
                                             finished_at=dt.datetime.now(dt.timezone.utc)), run_id)
            raise


def _stages(cfg: RunConfig, adapter: Adapter, probes: ProbeSet, store: Store, shard: Shard, bars: Bars,
            layers: list[int], msha: str, res: RunResult, base: dict) -> RunResult:
    run_id = res.run_id
    t0 = time.perf_counter()
    parts = {"model": adapter.name, "concept": probes.concept}
    akeys = [layer_key(msha, probes.sha, l, cfg.pooling, cfg.dtype) for l in layers]
    skey = f"s{SCORE_VERSION}:{int(cfg.importance)}:" + _digest(akeys)
    in_pass = _in_pass(adapter, probes, cfg, shard) if (
        cfg.importance and not store.is_complete("scores", parts, skey)) else None
    # extract stages under _staging/run-<id>, owned by the run's lock
    with bars.stage(f"extract {adapter.name}/{probes.concept}", len(probes.examples)) as tick:
        stats = extract(adapter, probes, store, layers=layers, run_id=run_id, pooling=cfg.pooling,
                        dtype=cfg.dtype, batch_size=cfg.batch_size, shard=shard, progress=tick,
                        in_pass=in_pass)
    res.seconds["extract"] = time.perf_counter() - t0
    if not stats.layers:
        res.skipped.append("extract")
    if not shard.main:
        return res

    # scores: keyed by everything they depend on
    t0 = time.perf_counter()
    conf = None
    if store.is_complete("scores", parts, skey):
        res.skipped.append("score")
    else:
        with bars.stage("score", len(layers)) as tick:
            acc = score_layers(store, adapter.name, probes, layers, device=str(adapter.device),
                               progress=tick, acts=stats.acts)
        imp = None
        if cfg.importance:
            conf, imp = _importance(adapter, probes, layers, cfg, bars, in_pass)
        write_scores(store, adapter.name, probes.concept, acc, imp, adapter.n_layers, key=skey,
                     run_id=run_id)
    stats.acts = None       # the extracted activations are the scores' alone
    res.seconds["score"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if cfg.ablate:
        from neurolens.engine.causal.ablation import stage as ablate

        akey = (f"a{ablate.ABLATE_VERSION}:{cfg.top_k}:{cfg.seed}:{','.join(cfg.ablate_methods)}:"
                + skey)
        if store.is_complete("ablations", parts, akey):
            res.skipped.append("ablate")
        else:
            ablate.run_ablations(adapter, probes, store, top_k=cfg.top_k, seed=cfg.seed,
                                 batch_size=cfg.batch_size, key=akey, run_id=run_id,
                                 confidence=conf, bars=bars, methods=cfg.ablate_methods)
    res.seconds["ablate"] = time.perf_counter() - t0

    _label(adapter, probes, store, cfg, run_id, skey, bars)
    from neurolens.store import read_table
    from neurolens.store.top import ranked

    scores = read_table(store, "scores", parts)   # read once: the top rows and the count
    res.top = ranked(scores, cfg.top_k).select(list(TOP_COLUMNS))
    n_scored = scores.num_rows
    inf = inference(probes)
    res.n_units = inf.n_units
    if not inf.feasible(n_scored):
        res.note = (f"{TOO_FEW} ({inf.n_units} {'groups' if inf.paired else 'cells'} in train: "
                    f"even a perfect neuron reaches only p = {inf.min_p:.1e}, "
                    f"q ~ {min(1.0, inf.min_p * n_scored):.2f} over {n_scored:,} neurons)")
    store.write_run(_run_row(**base, status="done", tokens=stats.tokens,
                             n_units=inf.n_units, design=inf.design, min_p=inf.min_p,
                             seconds_extract=res.seconds["extract"], seconds_score=res.seconds["score"],
                             seconds_ablate=res.seconds["ablate"],
                             finished_at=dt.datetime.now(dt.timezone.utc)), run_id)
    from neurolens.store.duck import write_views

    write_views(store)  # a bare `duckdb -init <store>/views.sql` sees this run too
    if cfg.report:
        from neurolens.reporting import render_report

        with bars.stage("report", 1) as tick:
            res.report = render_report(store.uri, adapter.name, probes.concept, reports_dir(cfg.out))
            tick(1)
    return res


def _digest(parts: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _in_pass(adapter: Adapter, probes: ProbeSet, cfg: RunConfig, shard: Shard):
    """The importance to take inside the extraction pass, when that pass can give it."""
    from neurolens.engine.causal.confidence import Confidence
    from neurolens.engine.causal.importance import InPass

    if shard.world > 1:
        return None
    conf = Confidence(adapter, probes.examples, batch_size=cfg.batch_size, fit=False)
    return InPass(conf, probes.examples) if InPass.fusable(adapter, conf) else None


def _importance(adapter: Adapter, probes: ProbeSet, layers: list[int], cfg: RunConfig, bars: Bars,
                in_pass=None):
    """Importance from the extraction pass when it gave it; else one forward and one
    backward over the concept train examples (with the probe fitted, if not yet)."""
    from neurolens.engine.causal.confidence import Confidence
    from neurolens.engine.causal.importance import importance

    if in_pass is not None and in_pass.result is not None:
        return in_pass.conf, in_pass.result
    if in_pass is not None and in_pass.conf.fitted:
        conf = in_pass.conf          # fitted on the extraction pass's features
    else:
        conf = Confidence(adapter, probes.examples, batch_size=cfg.batch_size)
    pos = probes.split("train", label=1)
    with bars.stage("importance", len(pos)) as tick:
        imp = importance(adapter, conf, pos, layers, batch_size=max(1, cfg.batch_size // 2),
                         progress=tick)
    return conf, imp


def _label(adapter: Adapter, probes: ProbeSet, store: Store, cfg: RunConfig, run_id: str, skey: str,
           bars: Bars) -> None:
    from neurolens.engine.labels import stage as label

    label.run_labels(adapter, probes, store, top_k=cfg.top_k, run_id=run_id, key=skey,
                     batch_size=cfg.batch_size, bars=bars, relabel=cfg.relabel)


def top_neurons(store: Store, model: str, concept: str, k: int) -> pa.Table:
    """The k best-ranked neurons with the columns the CLI prints (store.top is the one rule)."""
    from neurolens.store.top import top_neurons as best

    return best(store, model, concept, k, columns=TOP_COLUMNS)


TOP_COLUMNS = ("layer", "neuron", "rank", "score", "selectivity", "consistency", "importance_pct", "q_value",
               "n_units", "selectivity_test", "p_test", "replicated", "rank_probeless", "rank_probe")


__all__ = ["RunConfig", "RunResult", "new_run_id", "run", "top_neurons", "versions"]
