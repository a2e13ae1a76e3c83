"""A sweep: every model × concept pair through the run pipeline, one model loaded at a time,
resumable (pairs already in the store are reused), failures recorded per pair, then the
model's labels and the report set once at the end."""
from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from neurolens.api import Finding, PathLike, _methods, run_config
from neurolens.errors import ModelError, NeuroLensError, ProbeError, StoreError, first_line
from neurolens.store.paths import out_dir, reports_dir, store_dir


@dataclass
class Outcome:
    model: str
    concept: str
    status: str   # ran | skipped | failed
    detail: str


@dataclass
class SweepResult:
    """Every pair's outcome, the findings of those that ran or were reused, and the report set."""

    outcomes: list[Outcome]
    findings: list[Finding]
    report_path: Path | None = None

    @property
    def table(self) -> pl.DataFrame:
        return pl.DataFrame([o.__dict__ for o in self.outcomes],
                            schema={"model": pl.String, "concept": pl.String, "status": pl.String,
                                    "detail": pl.String})

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def _repr_html_(self) -> str:
        return self.table._repr_html_()


def run_pairs(models: Sequence[str], concepts: Sequence[str], modality_of: dict[str, str],
              config_for: Callable[[str, str], Any], bars: Any, done: list[Outcome], *,
              dtype: str = "float32", device: str | None = None, device_map: str | None = None,
              max_memory: str | None = None, out: PathLike | None = None,
              findings: list[Finding] | None = None) -> None:
    """Run every model × concept pair, appending each outcome to `done` (kept when a StoreError
    stops it): a model that cannot load or a pair that fails is recorded and the rest go on."""
    from neurolens.engine.models import registry

    with bars.stage("sweep", len(models) * len(concepts)) as overall:
        for m in models:
            try:
                adapter = registry.load(m, device=device, dtype=dtype, device_map=device_map,
                                        max_memory=max_memory)
            except NeuroLensError as e:
                done.append(Outcome(m, "*", "failed", f"cannot load: {first_line(e)}"))
                overall(len(concepts))
                continue
            todo = [c for c in concepts if modality_of[c] == adapter.modality]
            other = [c for c in concepts if c not in todo]
            if other:
                done.append(Outcome(adapter.name, ", ".join(other), "skipped",
                                    f"{modality_of[other[0]]} concepts; {adapter.name} is a "
                                    f"{adapter.modality} model"))
                overall(len(other))
            for c in todo:
                try:
                    o, f = run_pair(adapter, c, config_for(m, c), bars)
                except StoreError as e:  # the store itself is unusable (disk full): stop
                    done.append(Outcome(adapter.name, c, "failed", first_line(e)))
                    raise
                done.append(o)
                if f is not None and findings is not None:
                    findings.append(f)
                overall(1)
            if any(o.model == adapter.name and o.status != "failed" for o in done):
                relabel(adapter.name, out, done)
            del adapter


def scan_models(models: Sequence[str], bars: Any, done: list[Outcome], *, corpus: str = "wordnet",
                tokens: int | None = None, layers: Sequence[int] | None = None, dtype: str = "float32",
                device: str | None = None, out: PathLike | None = None, executor: str = "inprocess",
                address: str | None = None) -> None:
    """`--scan`: each model over the corpus (resumable like the pairs), after its pairs, so the
    corpus evidence covers every concept ranked for it; its shards on the sweep's executor.
    Failures are recorded, not raised."""
    from neurolens.engine.models import registry
    from neurolens.scans import scan

    for m in models:
        try:
            adapter = registry.load(m, device=device, dtype=dtype)
            if adapter.modality != "text":
                done.append(Outcome(adapter.name, f"scan:{corpus}", "skipped", "a vision model: scans read text"))
                continue
            r = scan(adapter, corpus, tokens=tokens, layers=list(layers) if layers else None,
                     out=None if out is None else str(out), bars=bars, executor=executor, address=address)
            done.append(Outcome(r.model, f"scan:{r.corpus}", "ran" if r.scanned else "skipped",
                                f"{r.tokens:,} tokens, {len(r.scanned)} layers scanned now; evidence for "
                                f"{', '.join(r.evidence) or 'no ranked concept'}"))
        except StoreError:
            raise
        except NeuroLensError as e:
            done.append(Outcome(m, f"scan:{corpus}", "failed", first_line(e)))


def run_pair(adapter: Any, concept: str, cfg: Any, bars: Any) -> tuple[Outcome, Finding | None]:
    """One pair on a loaded model: its outcome and finding. A StoreError is raised (the
    store is unusable: the sweep stops); any other failure is the pair's outcome."""
    from neurolens.probes import load_concept

    try:
        cfg.report = False  # the report set is rendered once, at the end
        cfg.relabel = False  # and the model's labels once, after its concepts
        f = run_config(cfg, adapter=adapter, probes=load_concept(concept), bars=bars)
        stages = {"extract", "score"} | ({"ablate"} if cfg.ablate else set())
        if f is not None and stages <= set(f.skipped):
            return Outcome(adapter.name, concept, "skipped", "already in the store"), f
        if f is not None and f.note:
            return Outcome(adapter.name, concept, "ran", f.note), f
        return Outcome(adapter.name, concept, "ran", _detail(f, cfg.top_k, cfg.ablate)), f
    except StoreError:
        raise
    except NeuroLensError as e:
        return Outcome(adapter.name, concept, "failed", first_line(e)), None
    except Exception as e:  # noqa: BLE001 - one broken pair must not end a sweep
        if os.environ.get("NEUROLENS_DEBUG"):
            traceback.print_exc()
        return Outcome(adapter.name, concept, "failed", f"internal error: {type(e).__name__}: {first_line(e)}"), None


def execute(executor: str, address: str | None = None) -> Callable[..., None]:
    """`run_pairs`, or its Ray twin bound to `address`: same arguments, same outcomes."""
    if executor == "ray":
        from functools import partial

        from neurolens.executors import run_pairs_ray

        return partial(run_pairs_ray, address=address)
    return run_pairs


def _detail(f: Finding | None, k: int, ablated: bool) -> str:
    """A sweep row: significant top neurons, how many replicate on held-out groups (q_test),
    how many a single-neuron ablation validates (the stored verdict: Finding.top's `validated`),
    and the neurons counted apart (opposite direction, lexical)."""
    if f is None:
        return "0 significant top neurons"
    top = f.top(k)
    out = f"{top.height} significant top neurons"
    if "replicated" in top.columns:
        out += f", {int(top['replicated'].fill_null(False).sum())} replicated"
    if ablated:
        n = int(top["validated"].fill_null(False).sum()) if "validated" in top.columns else 0
        out += f", {n} validated"
    s = f.summary()
    return out + f" (of {s['significant']} significant; {s['opposite']} opposite, {s['lexical']} lexical)"


def relabel(model: str, out: PathLike | None, done: list[Outcome]) -> None:
    """The model's labels, rebuilt once from every concept now stored for it."""
    from neurolens.engine.labels.stage import label_model
    from neurolens.pipeline import new_run_id
    from neurolens.store import Store as _Store

    try:
        label_model(_Store(store_dir(out)), model, run_id=new_run_id())
    except NeuroLensError as e:
        done.append(Outcome(model, "*", "failed", f"labels: {first_line(e)}"))


def _names(value: str | Iterable[str], every: Iterable[str]) -> list[str]:
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v) for v in value]
    out: list[str] = []
    for v in (v for v in items if v):
        for x in (list(every) if v == "all" else [v]):
            if x not in out:
                out.append(x)
    return out


def plan_sweep(models: str | Iterable[str], concepts: str | Iterable[str],
               config_for: Callable[[str, str], Any], *, device: str | None = None,
               device_map: str | None = None, max_memory: str | None = None,
               what: tuple[str, str] = ("models", "concepts")) -> tuple[list[str], list[str], dict[str, str]]:
    """The models and concepts asked for, checked before any work starts: (models, concepts,
    modality of every built-in concept). `what` names the two arguments in messages."""
    from neurolens.engine.models import registry
    from neurolens.pipeline import check_config
    from neurolens.probes import list_concepts

    modality_of = {c.name: c.modality for c in list_concepts()}
    ms = _names(models, registry.known_models())
    cs = _names(concepts, modality_of)
    if not ms:
        raise ModelError(f"{what[0]} names no model")
    if not cs:
        raise ProbeError(f"{what[1]} names no concept")
    unknown = [c for c in cs if c not in modality_of]
    if unknown:
        raise ProbeError(f"unknown concept {unknown[0]!r}; known: {', '.join(modality_of)}")
    for m in ms:
        registry.resolve(m)  # an unknown name or a folder that is not a checkpoint fails now
    check_config(config_for(ms[0], cs[0]))
    registry.pick_device(device)
    registry.placement(device_map, max_memory, device)
    return ms, cs, modality_of


def sweep(models: str | Iterable[str], concepts: str | Iterable[str] = "all", *, ablate: bool = True,
          out: PathLike | None = None, top_k: int = 10, layers: Sequence[int] | None = None,
          pooling: str = "mean", dtype: str = "float32", device: str | None = None, batch_size: int = 32,
          seed: int = 0, importance: bool = True, report: bool = True,
          ablate_methods: str | Sequence[str] = "zero", device_map: str | None = None,
          max_memory: str | None = None, progress: bool | None = None, scan: bool = False,
          corpus: str = "wordnet", scan_tokens: int | None = None, executor: str = "inprocess",
          address: str | None = None) -> SweepResult:
    """Every model × concept pair ("all", a comma-separated string or a list of each), resumable:
    pairs already in the store are reused. Failures are recorded in the result, not raised
    (except a StoreError, which stops the sweep). With `scan`, each model is then scanned over
    `corpus` (`scan_tokens` tokens) and the corpus evidence of its ranked concepts written.
    `executor="ray"` runs the pairs on the Ray cluster at `address` (default: a local one),
    one actor per model."""
    from neurolens.executors import check_executor

    check_executor(executor)
    from neurolens.pipeline import RunConfig
    from neurolens.progress import Bars

    outdir = str(out_dir(out))

    def config_for(m: str, c: str) -> RunConfig:
        return RunConfig(model=m, concept=c, layers=list(layers) if layers else None, pooling=pooling,
                         dtype=dtype, device=device, batch_size=batch_size, seed=seed, ablate=ablate,
                         ablate_methods=_methods(ablate_methods), top_k=top_k, importance=importance,
                         report=report, out=outdir, device_map=device_map, max_memory=max_memory)

    ms, cs, modality_of = plan_sweep(models, concepts, config_for, device=device, device_map=device_map,
                                     max_memory=max_memory)
    done: list[Outcome] = []
    findings: list[Finding] = []
    with Bars(enabled=progress) as bars:
        execute(executor, address)(ms, cs, modality_of, config_for, bars, done, dtype=dtype, device=device,
                                   device_map=device_map, max_memory=max_memory, out=outdir, findings=findings)
        if scan:
            scan_models(ms, bars, done, corpus=corpus, tokens=scan_tokens, layers=layers, dtype=dtype,
                        device=device, out=outdir, executor=executor, address=address)
    index = None
    if report and any(o.status != "failed" for o in done):
        from neurolens.reporting import render_set

        try:
            index = render_set(store_dir(outdir), reports_dir(outdir), progress=progress)
        except NeuroLensError as e:
            done.append(Outcome("*", "*", "failed", f"report set: {first_line(e)}"))
    return SweepResult(done, findings, index)


__all__ = ["Outcome", "SweepResult", "plan_sweep", "run_pairs", "scan_models", "sweep"]
