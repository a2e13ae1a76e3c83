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

import numpy as np
import pyarrow as pa

from neurolens.config import RunConfig, reports_dir, store_dir
from neurolens.constants import EFFECT_GATE
from neurolens.engine.models import registry
from neurolens.engine.models.adapters.base import Adapter, ModelError
from neurolens.engine.runtime.extract import Shard, extract, layer_key, model_sha
from neurolens.engine.runtime.fast import choices, choices_tag
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
    note: str | None = None         # one line when no finding is possible (too few groups, a word confound)
    baseline: str | None = None     # "negation: N significant; a word swap without negation: M"
    control: tuple[str, int, int] | None = None   # (control concept, significant on it, scored)
    lexical_note: str | None = None  # the probe's sides differ by a word: nothing is concept-specific


def versions(kernels: dict | None = None) -> str:
    """The packages' versions and, given them, the kernels the model computes with
    (`engine/runtime/fast.py` `choices`): what a run's numbers depend on besides its inputs."""
    import importlib.metadata as md

    out: dict = {}
    for p in ("neurolens", "torch", "transformers", "duckdb", "pyarrow", "numba"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    if kernels is not None:
        out["kernels"] = kernels
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
    if cfg.ablate_controls < 2:
        raise ConfigError(f"ablate_controls (--ablate-controls) must be at least 2, got {cfg.ablate_controls}")
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
            "world_size": shard.world, "versions": versions(choices(adapter.model)), "dtype": cfg.dtype,
            "started_at": started}
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
    """The run's steps in order; each publishes its partition or finds it already there."""
    parts = {"model": adapter.name, "concept": probes.concept}
    lexical, ckey = _control_step(cfg, adapter, probes, store, shard, bars, layers, msha, res)
    ktag = choices_tag(adapter.model)
    akeys = [layer_key(msha, probes.sha, l, cfg.pooling, cfg.dtype, ktag) for l in layers]
    skey = f"s{SCORE_VERSION}:{int(cfg.importance)}:" + _digest(akeys + [ckey])
    stats = _extract_step(cfg, adapter, probes, store, shard, bars, layers, res,
                          cfg.importance and not store.is_complete("scores", parts, skey))
    if not shard.main:
        return res
    conf = _score_step(cfg, adapter, probes, store, bars, layers, res, stats, skey, lexical)
    _ablate_step(cfg, adapter, probes, store, bars, res, skey, conf)
    _label(adapter, probes, store, cfg, res.run_id, skey, bars)
    return _finish(cfg, adapter, probes, store, bars, res, base, stats.tokens)


def _extract_step(cfg: RunConfig, adapter: Adapter, probes: ProbeSet, store: Store, shard: Shard,
                  bars: Bars, layers: list[int], res: RunResult, with_importance: bool):
    """Pooled activations of every layer into the store (importance in the same pass when it can)."""
    t0 = time.perf_counter()
    in_pass = _in_pass(adapter, probes, cfg, shard) if with_importance else None
    # extract stages under _staging/run-<id>, owned by the run's lock
    with bars.stage(f"extract {adapter.name}/{probes.concept}", len(probes.examples)) as tick:
        stats = extract(adapter, probes, store, layers=layers, run_id=res.run_id, pooling=cfg.pooling,
                        dtype=cfg.dtype, batch_size=cfg.batch_size, shard=shard, progress=tick,
                        in_pass=in_pass)
    stats.in_pass = in_pass
    res.seconds["extract"] = res.seconds.get("extract", 0.0) + time.perf_counter() - t0
    if not stats.layers:
        res.skipped.append("extract")
    return stats


def _score_step(cfg: RunConfig, adapter: Adapter, probes: ProbeSet, store: Store, bars: Bars,
                layers: list[int], res: RunResult, stats, skey: str, lexical):
    """Scores (keyed by everything they depend on); returns the confidence importance fitted."""
    t0 = time.perf_counter()
    parts = {"model": adapter.name, "concept": probes.concept}
    conf = None
    if store.is_complete("scores", parts, skey):
        res.skipped.append("score")
    else:
        with bars.stage("score", len(layers)) as tick:
            acc = score_layers(store, adapter.name, probes, layers, device=str(adapter.device),
                               progress=tick, acts=stats.acts)
        imp = None
        if cfg.importance:
            conf, imp = _importance(adapter, probes, layers, cfg, bars, stats.in_pass)
        write_scores(store, adapter.name, probes.concept, acc, imp, adapter.n_layers, key=skey,
                     run_id=res.run_id, lexical=lexical)
    stats.acts = None       # the extracted activations are the scores' alone
    res.seconds["score"] = time.perf_counter() - t0
    return conf


def _control_step(cfg: RunConfig, adapter: Adapter, probes: ProbeSet, store: Store, shard: Shard,
                  bars: Bars, layers: list[int], msha: str, res: RunResult):
    """The lexical control, scored like the concept (same layers, same extraction path), and the
    neurons it makes significant: (lexical mask in (layer, neuron) order or None, its key)."""
    from neurolens.probes import control_of
    from neurolens.probes.confounds import confound_note

    note = confound_note(probes.examples) if probes.modality == "text" else None
    if note:        # a word could explain every finding: nothing counts as concept-specific
        res.lexical_note = note
        return np.ones(sum(adapter.n_neurons(l) for l in layers), bool), "confounded"
    ctrl = control_of(probes)
    if ctrl is None:
        return None, "no-control"
    akeys = [layer_key(msha, ctrl.sha, l, cfg.pooling, cfg.dtype, choices_tag(adapter.model)) for l in layers]
    ckey = f"s{SCORE_VERSION}:0:" + _digest(akeys)
    parts = {"model": adapter.name, "concept": ctrl.concept}
    if not store.is_complete("scores", parts, ckey):
        stats = _extract_step(cfg, adapter, ctrl, store, shard, bars, layers, res, False)
        if not shard.main:
            return None, ckey
        with bars.stage("score control", len(layers)) as tick:
            acc = score_layers(store, adapter.name, ctrl, layers, device=str(adapter.device),
                               progress=tick, acts=stats.acts)
        write_scores(store, adapter.name, ctrl.concept, acc, None, adapter.n_layers, key=ckey,
                     run_id=res.run_id)
    elif not shard.main:
        return None, ckey
    from neurolens.store import read_table

    t = read_table(store, "scores", parts).sort_by([("layer", "ascending"), ("neuron", "ascending")])
    lexical = t.column("significant").to_numpy(zero_copy_only=False).astype(bool)
    res.control = (ctrl.concept, int(lexical.sum()), t.num_rows)
    return lexical, ckey


def _ablate_step(cfg: RunConfig, adapter: Adapter, probes: ProbeSet, store: Store, bars: Bars,
                 res: RunResult, skey: str, conf) -> None:
    t0 = time.perf_counter()
    parts = {"model": adapter.name, "concept": probes.concept}
    if cfg.ablate:
        from neurolens.engine.causal.ablation import stage as ablate

        akey = (f"a{ablate.ABLATE_VERSION}:{cfg.top_k}:{cfg.seed}:{','.join(cfg.ablate_methods)}:"
                f"{cfg.ablate_controls}{':all' if cfg.ablate_all_controls else ''}:"
                + skey)
        if store.is_complete("ablations", parts, akey):
            res.skipped.append("ablate")
        else:
            ablate.run_ablations(adapter, probes, store, top_k=cfg.top_k, seed=cfg.seed,
                                 batch_size=cfg.batch_size, key=akey, run_id=res.run_id,
                                 confidence=conf, bars=bars, methods=cfg.ablate_methods,
                                 n_random=cfg.ablate_controls, sequential=not cfg.ablate_all_controls)
    res.seconds["ablate"] = time.perf_counter() - t0


def _finish(cfg: RunConfig, adapter: Adapter, probes: ProbeSet, store: Store, bars: Bars,
            res: RunResult, base: dict, tokens) -> RunResult:
    """The top rows, the notes (too few groups; the control's baseline), the run row, the views
    and the report."""
    from neurolens.store import read_table
    from neurolens.store.top import ranked

    parts = {"model": adapter.name, "concept": probes.concept}
    scores = read_table(store, "scores", parts)   # read once: the top rows and the counts
    res.top = ranked(scores, cfg.top_k).select(list(TOP_COLUMNS))
    res.baseline = _baseline_line(probes.concept, scores, res)
    n_scored = scores.num_rows
    inf = inference(probes)
    res.n_units = inf.n_units
    notes = []
    if not inf.feasible(n_scored):
        notes.append(f"{TOO_FEW} ({inf.n_units} {'groups' if inf.paired else 'cells'} in train: "
                     f"even a perfect neuron reaches only p = {inf.min_p:.1e}, "
                     f"q ~ {min(1.0, inf.min_p * n_scored):.2f} over {n_scored:,} neurons)")
    if res.lexical_note:
        notes.append(res.lexical_note)
    res.note = "; ".join(notes) or None
    store.write_run(_run_row(**base, status="done", tokens=tokens,
                             n_units=inf.n_units, design=inf.design, min_p=inf.min_p,
                             seconds_extract=res.seconds["extract"], seconds_score=res.seconds["score"],
                             seconds_ablate=res.seconds["ablate"],
                             finished_at=dt.datetime.now(dt.timezone.utc)), res.run_id)
    from neurolens.store.duck import write_views

    write_views(store)  # a bare `duckdb -init <store>/views.sql` sees this run too
    if cfg.report:
        from neurolens.reporting import render_report
        from neurolens.store.duck import retrying

        with bars.stage("report", 1) as tick:   # read again if a concurrent writer replaced a partition
            res.report = retrying(lambda: render_report(store.uri, adapter.name, probes.concept,
                                                        reports_dir(cfg.out)))
            tick(1)
    return res


def _baseline_line(concept: str, scores: pa.Table, res: RunResult) -> str:
    """"negation: N significant; a word swap without negation: M" (and what is counted apart)."""
    col = lambda c: scores.column(c).to_numpy(zero_copy_only=False).astype(bool)   # noqa: E731
    sig, lex, opp = col("significant"), col("lexical"), col("opposite")
    line = (f"{concept}: {int((sig & ~lex).sum()):,} significant of {scores.num_rows:,} "
            f"(concept-preferring, effect >= {EFFECT_GATE:g}, not lexical)")
    if res.control is not None:
        name = concept.replace("_", " ")
        line += f"; a word swap without {name}: {res.control[1]:,}"
    elif res.lexical_note:
        line += "; no concept-specific neuron: the probe's sides differ by a word"
    return line + f"; {int((sig & lex).sum()):,} lexical and {int(opp.sum()):,} opposite-direction, counted apart"


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
               "n_units", "effect", "selectivity_test", "p_test", "q_test", "replicated", "rank_probeless",
               "rank_probe")


__all__ = ["RunConfig", "RunResult", "new_run_id", "run", "top_neurons", "versions"]
