"""The Python API: load a model once, find concepts in it, read the results as polars frames.

    import neurolens as nl
    m = nl.load("minilm")                       # a Model, reusable across concepts
    f = m.find("negation", layers=[4, 5])       # a Finding
    f.top(5)                                    # polars: layer, neuron, rank, score, ...
    nl.Store(f.out).sql("select count(*) from scores")

Everything goes through the same pipeline as the CLI (which is a thin layer over this
module), into the same store, and is resumed and reused the same way.
"""
from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import polars as pl

from neurolens.constants import ALPHA, EFFECT_GATE, SPECIFICITY_MIN
from neurolens.errors import NeuroLensError, ProbeError, StoreError
from neurolens.probes.types import ProbeSet
from neurolens.store.paths import out_dir, store_dir

PathLike = str | os.PathLike[str]
#: the columns `Finding.top` shows first, when the store has them
TOP_COLUMNS = ("layer", "neuron", "rank", "score", "selectivity", "effect", "consistency", "importance_pct",
               "q_value", "replicated", "selectivity_test", "p_test", "q_test")


# -- probes ------------------------------------------------------------------------------------
def Probes(positive: Sequence[Any], negative: Sequence[Any], *, concept: str = "custom",  # noqa: N802
           description: str = "") -> ProbeSet:
    """A concept from Python lists, checked like a probe file. Items are strings or
    {"text", "group", "target"} dicts; groups drive the group-wise train/test split."""
    from neurolens.probes.memory import probes_from_lists

    return probes_from_lists(positive, negative, concept=concept, description=description)


def as_probes(concept: str | PathLike | ProbeSet) -> ProbeSet:
    """A ProbeSet from a built-in concept name, a probe file or folder, or a ProbeSet."""
    from neurolens.probes import load_concept, load_probe_file

    if isinstance(concept, ProbeSet):
        return concept
    if isinstance(concept, os.PathLike):
        return load_probe_file(concept)
    if isinstance(concept, str):
        if concept.lower().endswith((".json", ".jsonl", ".csv")) or os.path.isdir(concept):
            return load_probe_file(concept)
        return load_concept(concept)
    raise ProbeError(f"a concept is a name, a probe file or nl.Probes(...), not {type(concept).__name__}")


# -- the store -----------------------------------------------------------------------------------
class Store:
    """The store under `out` (default $NEUROLENS_OUT or ./neurolens-out), read through DuckDB."""

    def __init__(self, out: PathLike | None = None):
        self.out = out_dir(out)
        self.root = store_dir(out)

    def sql(self, query: str, **params: Any) -> pl.DataFrame:
        """Run SQL over the views (runs, scores, ablations, labels, ...); `$name` binds params."""
        from neurolens.queries import sql

        return sql(self.root, query, params or None)

    def query(self, name: str, **params: Any) -> pl.DataFrame:
        """Run a named query (`neurolens query --list`) with typed parameters."""
        from neurolens.queries import named

        return named(self.root, name, **params)

    def table(self, name: str, **parts: str) -> pl.DataFrame:
        """One stored table, or one partition of it (e.g. model=..., concept=...)."""
        from neurolens.store import Store as _Store
        from neurolens.store import read_table

        return pl.from_arrow(read_table(_Store(self.root), name, parts or None))

    def __repr__(self) -> str:
        return f"Store({str(self.out)!r})"


# -- a finding -----------------------------------------------------------------------------------
@dataclass
class Finding:
    """What one model × concept run found; the frames are read from the store when asked for."""

    model: str
    concept: str
    run_id: str
    out: Path
    layers: list[int]
    report_path: Path | None = None
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    note: str | None = None   # one line when the probes allow no finding (too few groups, a word confound)
    baseline: str | None = None   # "negation: N significant; a word swap without negation: M"

    @property
    def store(self) -> Store:
        return Store(self.out)

    def _table(self, name: str, parts: dict[str, str]) -> pl.DataFrame | None:
        from neurolens.store import Store as _Store
        from neurolens.store import read_table

        s = _Store(store_dir(self.out))
        if s.marker(name, parts) is None:
            return None
        return pl.from_arrow(read_table(s, name, parts))

    @cached_property
    def scores(self) -> pl.DataFrame:
        """Every scored neuron (one row per layer × neuron), as stored."""
        t = self._table("scores", {"model": self.model, "concept": self.concept})
        if t is None:
            raise StoreError(f"no scores for {self.model} × {self.concept} in {self.out}")
        return t

    @cached_property
    def ablations(self) -> pl.DataFrame:
        """Ablation rows (empty when the run did not ablate)."""
        from neurolens.store import SCHEMAS

        t = self._table("ablations", {"model": self.model, "concept": self.concept})
        return pl.from_arrow(SCHEMAS["ablations"].empty_table()) if t is None else t

    @cached_property
    def labels(self) -> pl.DataFrame:
        """The model's labels of the neurons significant for this concept."""
        from neurolens.store import SCHEMAS

        t = self._table("labels", {"model": self.model})
        if t is None:
            return pl.from_arrow(SCHEMAS["labels"].empty_table())
        return t.filter(pl.col("concepts").list.contains(self.concept))

    def top(self, k: int = 10) -> pl.DataFrame:
        """The k best-ranked neurons (significant ones only), best first, with their single-neuron
        ablation verdict (`validated` under any method that ran, the stored column; the best
        z for display) and label where the store has them."""
        from neurolens.store.top import top_order

        if k < 1:
            raise NeuroLensError(f"top(k) needs k of at least 1, got {k}")
        sc = self.scores
        best = sc[top_order(sc.to_arrow(), k).tolist()] if sc.height else sc
        cols = [c for c in TOP_COLUMNS if c in best.columns]
        out = best.select(cols)
        ab = self.ablations
        if ab.height and "z" in ab.columns:
            z = (ab.filter(pl.col("mode") == "single").group_by("layer", "neuron")
                 .agg(pl.col("z").fill_nan(None).max(), _validated_expr().any().alias("validated"),
                      pl.col("metric").first()))
            out = out.join(z, on=["layer", "neuron"], how="left", maintain_order="left")
        lb = self.labels
        if lb.height:
            out = out.join(lb.select("layer", "neuron", "label"), on=["layer", "neuron"], how="left",
                           maintain_order="left")
        return out

    def summary(self) -> dict[str, Any]:
        sc = self.scores
        rep = (int(sc.filter(pl.col("rank").is_not_null())["replicated"].fill_null(False).sum())
               if "replicated" in sc.columns else None)
        def count(col: str) -> int:
            return int(sc[col].fill_null(False).sum()) if col in sc.columns else 0

        sig = (int((sc["significant"].fill_null(False) & ~sc["lexical"].fill_null(False)).sum())
               if "significant" in sc.columns else int((sc["q_value"] < ALPHA).sum()))
        lexical = (int((sc["significant"].fill_null(False) & sc["lexical"].fill_null(False)).sum())
                   if "lexical" in sc.columns else 0)
        return {"model": self.model, "concept": self.concept, "scored": sc.height,
                "significant": sig, "opposite": count("opposite"), "lexical": lexical,
                "ranked": int(sc["rank"].is_not_null().sum()),
                "replicated": rep, "note": self.note,
                "validated": n_validated(self.ablations) if self.ablations.height else None}

    def __repr__(self) -> str:
        s = self.summary()
        return (f"Finding({self.model!r}, {self.concept!r}: {s['ranked']} ranked of {s['scored']} neurons"
                f"{'' if self.report_path is None else f', report {str(self.report_path)!r}'})")

    def _repr_html_(self) -> str:
        s = self.summary()
        e = html.escape
        head = (f"<b>{e(self.model)} · {e(self.concept)}</b>: {s['scored']} neurons scored, "
                f"{s['significant']} significant (q &lt; {ALPHA}, concept-preferring, effect ≥ {EFFECT_GATE:g}, "
                f"not lexical), {s['opposite']} in the opposite direction and {s['lexical']} lexical "
                f"(counted apart), {s['ranked']} ranked")
        if s["replicated"] is not None:
            head += f", {s['replicated']} replicated on held-out groups"
        if s["validated"] is not None:
            head += (f", {s['validated']} validated by ablation (q &lt; {ALPHA}, specificity &gt; "
                     f"{SPECIFICITY_MIN:g})")
        if s["note"]:
            head += f"<br><b>{e(s['note'])}</b>"
        link = (f'<br>report: <a href="{e(self.report_path.as_uri())}">{e(str(self.report_path))}</a>'
                if self.report_path else "")
        top = self.top(10)
        table = top._repr_html_() if top.height else f"<p>no neuron passes q &lt; {ALPHA} for this concept</p>"
        return f"<div>{head}{link}{table}</div>"


def _validated_expr() -> pl.Expr:
    """The stored verdict (engine/causal/ablation/verdict.py); a missing one is False."""
    return pl.col("validated").fill_null(False)


def n_validated(ablations: pl.DataFrame) -> int:
    """Distinct neurons whose single-neuron ablation is validated under any method."""
    if "validated" not in ablations.columns:
        return 0
    v = ablations.filter((pl.col("mode") == "single") & _validated_expr())
    return v.select("layer", "neuron").unique().height


# -- a neuron page --------------------------------------------------------------------------------
@dataclass
class NeuronPage:
    """One scanned neuron's page on disk (`path`); shown inline in Jupyter."""

    model: str
    layer: int
    neuron: int
    path: Path

    def _repr_html_(self) -> str:
        doc = html.escape(self.path.read_text(encoding="utf-8"), quote=True)
        return (f'<iframe srcdoc="{doc}" style="width:100%;height:720px;border:0" '
                f'title="{html.escape(self.model)} L{self.layer}.N{self.neuron}"></iframe>')

    def __repr__(self) -> str:
        return f"NeuronPage({self.model!r}, L{self.layer}.N{self.neuron}, {str(self.path)!r})"


# -- a model -------------------------------------------------------------------------------------
class Model:
    """A loaded model; `find` runs concepts through it without loading it again."""

    def __init__(self, adapter: Any):
        self.adapter = adapter

    name = property(lambda self: self.adapter.name)
    n_layers = property(lambda self: self.adapter.n_layers)
    modality = property(lambda self: self.adapter.modality)
    kind = property(lambda self: self.adapter.kind)
    device = property(lambda self: self.adapter.device)
    dtype = property(lambda self: str(self.adapter.dtype).removeprefix("torch."))

    def find(self, concept: str | PathLike | ProbeSet, *, ablate: bool = False, out: PathLike | None = None,
             top_k: int = 10, layers: Sequence[int] | None = None, pooling: str = "mean",
             batch_size: int = 32, seed: int = 0, importance: bool = True, report: bool = True,
             ablate_methods: str | Sequence[str] = "zero", progress: bool | None = None) -> Finding:
        """Probe, extract, score (and with `ablate`, confirm by ablation), label and report one
        concept: a built-in name, a probe file, or `nl.Probes(...)`."""
        from neurolens.pipeline import RunConfig

        probes = as_probes(concept)
        cfg = RunConfig(model=self.name, concept=probes.concept, layers=list(layers) if layers else None,
                        pooling=pooling, dtype=self.dtype, batch_size=batch_size, seed=seed, ablate=ablate,
                        ablate_methods=_methods(ablate_methods), top_k=top_k, importance=importance,
                        report=report, out=str(out_dir(out)))
        return run_config(cfg, adapter=self.adapter, probes=probes, progress=progress)

    def scan(self, corpus: str | PathLike = "wordnet", *, tokens: int | None = None,
             layers: Sequence[int] | None = None, out: PathLike | None = None, k: int = 20,
             length: int = 64, batch_size: int = 16, words: Sequence[str] = (), shards: int | None = None,
             progress: bool | None = None, executor: str = "inprocess", address: str | None = None) -> Any:
        """Scan every neuron of `layers` (default all) over a corpus (`wordnet`, a file or a
        folder): top excerpts, interval samples, histograms, logit effects and the corpus evidence
        of the concepts the store has ranked. Resumes where a killed scan stopped.
        `executor="ray"` scans the shards on the Ray cluster at `address` (default: a local one)."""
        from neurolens.scans import scan

        return scan(self.adapter, os.fspath(corpus), tokens=tokens, layers=list(layers) if layers else None,
                    out=None if out is None else str(out_dir(out)), k=k, length=length,
                    batch_size=batch_size, shards=shards, words=list(words), progress=progress,
                    executor=executor, address=address)

    def neuron(self, layer: int, neuron: int, *, corpus: str | None = None,
               out: PathLike | None = None) -> NeuronPage:
        """The page of one scanned neuron (ranked or not); renders inline in Jupyter."""
        from neurolens.scans import neuron_page

        return NeuronPage(self.name, layer, neuron, neuron_page(self.name, layer, neuron, corpus=corpus,
                                                                 out=None if out is None else str(out)))

    def __repr__(self) -> str:
        return f"Model({self.name!r}, {self.kind}, {self.n_layers} layers, {self.device}, {self.dtype})"


def _methods(m: str | Sequence[str]) -> str:
    return m if isinstance(m, str) else ",".join(m)


def load(name: str | PathLike, *, device: str | None = None, dtype: str = "float32",
         device_map: str | None = None, max_memory: str | None = None) -> Model:
    """A model by registry name (`neurolens models`), checkpoint folder, .gguf file or hub id.
    `device_map="auto"` (with `max_memory`, e.g. "20GiB") spreads a big model over GPUs, CPU
    and disk through accelerate."""
    from neurolens.engine.models import registry

    return Model(registry.load(os.fspath(name), device=device, dtype=dtype, device_map=device_map,
                               max_memory=max_memory))


def find(model: str | PathLike | Model, concept: str | PathLike | ProbeSet, **kw: Any) -> Finding:
    """`load(model).find(concept, ...)`; a Model is used as it is."""
    return (model if isinstance(model, Model) else load(model)).find(concept, **kw)


def scan(model: str | PathLike | Model, corpus: str | PathLike = "wordnet", **kw: Any) -> Any:
    """`load(model).scan(corpus, ...)`; a Model is used as it is."""
    return (model if isinstance(model, Model) else load(model)).scan(corpus, **kw)


def run_config(cfg: Any, *, adapter: Any = None, probes: ProbeSet | None = None, bars: Any = None,
               progress: bool | None = None) -> Finding | None:
    """One pipeline run from a RunConfig (what `neurolens run` does); None on a non-main shard."""
    from neurolens.pipeline import run
    from neurolens.progress import Bars

    if bars is None:
        with Bars(enabled=progress) as own:
            res = run(cfg, adapter=adapter, probes=probes, bars=own)
    else:
        res = run(cfg, adapter=adapter, probes=probes, bars=bars)
    if res.top is None:
        return None
    return Finding(res.model, res.concept, res.run_id, out_dir(cfg.out), res.layers, res.report,
                   list(res.skipped), dict(res.seconds), res.note, res.baseline)


__all__ = ["Finding", "Model", "NeuronPage", "Probes", "Store", "as_probes", "find", "load", "run_config", "scan"]
