"""The three kinds of page: a model × concept report, a two-model comparison, and the
report-set index. Each is one self-contained HTML file."""
from __future__ import annotations

import datetime as dt
import itertools
import math
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from . import charts as ch
from .data import (ALPHA, SPECIFICITY_MIN, Entry, ReportError, catalog, check, connect, has_rows, query,
                   stage_neuron_values)
from .html import Charts, render_page, thumbnail
from .sankey import sankey_svg

TOP_N = 8                 # passport cards per report
SCATTER_MAX_REST = 2500   # non-significant neurons drawn in the scatter at most
SCATTER_MAX_SIG = 2500    # significant neurons drawn at most (the best-ranked first)
SANKEY_FAMILIES = 12      # families drawn by name in the Sankey; the rest as one band
HIST_BINS = 30
OVERLAP_K = 10            # top-k of the three rankings compared in the peer panel
DEPTH_BINS = 10


def report_name(model: str, concept: str) -> str:
    return f"{model}__{concept}.html"


def compare_name(model_a: str, model_b: str) -> str:
    return f"compare__{model_a}__vs__{model_b}.html"


def _f(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def _ranges(xs: list[int] | None) -> str:
    if not xs:
        return "–"
    xs = sorted(set(int(x) for x in xs))
    out, start, prev = [], xs[0], xs[0]
    for x in xs[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(str(start) if start == prev else f"{start}–{prev}")
        if x is not None:
            start = prev = x
    return ", ".join(out)


def _seconds(x: Any) -> str:
    x = _f(x)
    if x is None:
        return "–"
    return f"{x:.1f} s" if x < 120 else f"{x / 60:.1f} min"


def _display_tokens(tokens: list[str], acts: list[float]) -> list[dict]:
    """Tokens as they read (GPT-2 'Ġ', SentencePiece '▁', WordPiece '##'), with a highlight alpha."""
    pos = [max(float(a or 0.0), 0.0) for a in acts]
    top = max(pos) if pos else 0.0
    bpe = any(t.startswith(("Ġ", "▁")) for t in tokens)
    out = []
    for i, (t, a) in enumerate(zip(tokens, acts)):
        if t.startswith("##"):
            text, sep = t[2:], ""
        elif t.startswith(("Ġ", "▁")):
            text, sep = t[1:], " "
        else:
            text, sep = t, ("" if bpe or t in ".,;:!?)'\"" else " ")
        out.append({"sep": sep if i else "", "text": text.replace("Ċ", "↵"),
                    "alpha": round(pos[i] / top, 3) if top > 0 else 0.0, "act": _f(a)})
    return out


# ---------------------------------------------------------------------------------------
# one model × concept
# ---------------------------------------------------------------------------------------
def render_report(store_root: str | Path, model: str, concept: str, out_dir: str | Path, *,
                  top_n: int = TOP_N, con: duckdb.DuckDBPyConnection | None = None,
                  entries: list[Entry] | None = None, index_link: bool | None = None) -> Path:
    """Render the report of one model × concept to `<out_dir>/<model>__<concept>.html`:
    each section is one step below, gathering its numbers and charts."""
    out_dir = Path(out_dir)
    con = con or connect(store_root)
    entries = entries if entries is not None else catalog(con)
    check(entries, model, concept)
    entry = next(e for e in entries if e.model == model and e.concept == concept)
    p = {"model": model, "concept": concept}
    c = Charts()
    notes: defaultdict[str, str] = defaultdict(str)
    head = _headline(con, p, top_n)
    where = _where_section(con, c, p, entry, head)
    scatter = _scatter_section(con, c, p, head)
    sankey = _sankey_section(con, p, head["have_labels"], notes)
    abl = _ablation_section(con, c, p, head["have_ablations"], notes)
    cards = _cards(con, c, model, concept, entry, head["top"], head.pop("singles"), notes)
    _link_neuron_pages(con, store_root, out_dir, model, cards)
    top = head["top"]
    ctx = dict(
        kind="report", title=f"{concept} in {model}", model=model, concept=concept,
        modality=entry.modality, run_layers=_ranges(head["run"]["layers"]) if head["run"] else "–",
        seconds=_seconds, n_layers=entry.n_layers, best=top[0] if top else None, cards=cards,
        top_validated=sum(bool(t["validated"]) for t in top),
        finding=_finding(con, p, head["run"], head["n_scored"], head["have_ablations"]),
        overlap=_overlap(con, p, OVERLAP_K), alpha=ALPHA, spec_min=SPECIFICITY_MIN, notes=notes,
        metric_text=METRIC_TEXT,
        **head, **where, **scatter, **sankey, **abl,
        index_link=(out_dir / "index.html").exists() if index_link is None else index_link,
        generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
    return render_page("report.html.j2", out_dir / report_name(model, concept), c, **ctx)


def _headline(con, p: dict, top_n: int) -> dict:
    """The run, the counts per layer, the top neurons and what was validated."""
    run_df = query(con, "run_info", **p)
    layer_counts = query(con, "layer_counts", **p)
    have_ablations = has_rows(con, "ablations", **p)
    singles = query(con, "ablation_single", **p) if have_ablations else None
    return dict(
        run=run_df.to_dicts()[0] if run_df.height else None, layer_counts=layer_counts.to_dicts(),
        n_scored=int(layer_counts["n_scored"].sum()), n_sig=int(layer_counts["n_sig"].sum()),
        top=query(con, "top_neurons", k=top_n, **p).to_dicts(), have_ablations=have_ablations,
        have_labels=has_rows(con, "labels", model=p["model"]), singles=singles,
        n_validated=(singles.filter(pl.col("validated")).select("layer", "neuron").unique().height
                     if singles is not None else None),
    )


def _where_section(con, c: Charts, p: dict, entry: Entry, head: dict) -> dict:
    """Where it lives: the layer map, and the concept's share among the sweep's concepts."""
    widest = max((r["n_scored"] or 0 for r in head["layer_counts"]), default=0)
    bins = min(64, max(8, int(widest or 1)))
    lm = query(con, "layer_map", bins=bins, **p)
    sweep = query(con, "sweep_share", model=p["model"])
    return dict(layer_map_id=c.add(ch.layer_map(lm, entry.n_layers or lm["layer"].n_unique()), "layers"),
                sweep_id=c.add(ch.sweep_share(sweep, p["concept"]), "sweep"),
                n_concepts=sweep["concept"].n_unique())


def _scatter_section(con, c: Charts, p: dict, head: dict) -> dict:
    """Selectivity against importance, sampled to keep the page light, and a note saying how."""
    n_scored, n_sig = head["n_scored"], head["n_sig"]
    n_rest = n_scored - n_sig
    keep = 1.0 if n_rest <= SCATTER_MAX_REST else SCATTER_MAX_REST / n_rest
    best = SCATTER_MAX_SIG // 2
    keep_sig = 1.0 if n_sig <= SCATTER_MAX_SIG else (SCATTER_MAX_SIG - best) / max(1, n_sig - best)
    sc = query(con, "scatter", keep=keep, keep_sig=keep_sig, max_sig=best, **p)
    note = None
    if keep < 1.0 or keep_sig < 1.0:
        shown = sc.filter(pl.col("status") == "neither").height
        sig_part = (f"all {n_sig:,} significant ones are drawn" if keep_sig >= 1.0 else
                    f"of the {n_sig:,} significant ones, the {best:,} best-ranked and a random "
                    f"sample of the others ({sc.height - shown:,} in all) are drawn")
        note = (f"{n_scored:,} neurons were scored; {sig_part}, plus a random sample of "
                f"{shown:,} of the other {n_rest:,} ({100 * keep:.1f}%) to keep the page light.")
    return dict(scatter_id=c.add(ch.scatter(sc), "scatter"), scatter_note=note)


def _sankey_section(con, p: dict, have_labels: bool, notes: defaultdict[str, str]) -> dict:
    """Concept to layer to label family, for the whole model."""
    model = p["model"]
    flows = query(con, "sankey", model=model, max_families=SANKEY_FAMILIES)
    if not have_labels:
        notes["sankey_labels"] = ("No neuron labels in the store for this model yet, so every "
                                  "neuron's family shows as 'unlabelled'.")
    return dict(sankey=sankey_svg(flows.iter_rows(), highlight=p["concept"],
                                  title=f"{model}: concept to layer to family") if flows.height else None)


def _ablation_section(con, c: Charts, p: dict, have_ablations: bool,
                      notes: defaultdict[str, str]) -> dict:
    """The top-k curve against random sets, and each method's drop at the largest k."""
    ablation_id, abl_summary = None, []
    if not have_ablations:
        notes["ablation"] = ("No ablations in the store for this model × concept: run with "
                             "--ablate to test whether the model relies on these neurons.")
        return dict(ablation_id=None, abl_summary=[], zero=None, range_note=_range_note([]))
    curve = query(con, "ablation_curve", **p)
    rand = query(con, "ablation_random", **p)
    if curve.height:
        ablation_id = c.add(ch.ablation(curve, rand), "ablation")
        order = {"zero": 0, "mean": 1, "range": 2}
        for m, g in sorted(curve.group_by("method"), key=lambda mg: (order.get(mg[0][0], 9), mg[0][0])):
            r = g.sort("k").row(-1, named=True)
            abl_summary.append({"method": m[0], "k": r["k"], "drop": _f(r["drop"]),
                                "random": _f(r["random_drop_mean"]), "z": _f(r["z"]),
                                "off": _f(r["off_target_drop"]), "p": _f(r["p_value"]),
                                "q": _f(r["q_value"]), "spec": _f(r["specificity"]),
                                "n_controls": r["n_controls"], "validated": bool(r["validated"]),
                                "metric": r["metric"]})
        notes["ablation_random"] = (
            "Dots are individual random sets of k neurons from the same layers; the grey band is "
            "their mean ± 2σ." if rand.height else
            "The store keeps only the mean and standard deviation of the random sets here: "
            "the grey band is the normal band mean ± 2σ.")
    else:
        notes["ablation"] = "Only single-neuron ablations are stored for this concept (no top-k curve)."
    zero = next((a for a in abl_summary if a["method"] == "zero"), abl_summary[0] if abl_summary else None)
    return dict(ablation_id=ablation_id, abl_summary=abl_summary, zero=zero, range_note=_range_note(abl_summary))


#: what each `metric` of the ablations table is a probability of
METRIC_TEXT = {
    "target_prob": "the model's own output probability of the probe's target",
    "readout_prob": "the probability of a readout probe on the final pooled representation (an encoder without a head)",
}


def _range_note(summary: list[dict]) -> str:
    """Whether range ablation kept the effect with less collateral damage than zero/mean."""
    by = {a["method"]: a for a in summary}
    rg = by.get("range")
    whole = [by[m] for m in ("zero", "mean") if m in by]
    if rg is None or not whole or rg["drop"] is None:
        return "Run with --ablate-methods zero,mean,range to compare range with whole-neuron ablation."
    parts = []
    for w in whole:
        if w["drop"] is None or w["off"] is None or rg["off"] is None:
            continue
        kept = rg["drop"] / w["drop"] if w["drop"] else float("nan")
        parts.append(f"against {w['method']}, range keeps {kept:.0%} of the drop with "
                     f"{'less' if abs(rg['off']) < abs(w['off']) else 'no less'} collateral damage "
                     f"(off-target {rg['off']:+.1%} vs {w['off']:+.1%})")
    return ("Range ablation: " + "; ".join(parts) + ".") if parts else ""


def _link_neuron_pages(con, store_root: str | Path, out_dir: Path, model: str, cards: list[dict]) -> None:
    """Cards of scanned neurons link to their corpus pages (rendered now, beside the report)."""
    from .neuron import page_path, render_neuron

    for card in cards:
        card["page"] = None
    scanned = query(con, "scanned_layers", model=model) if has_rows(con, "neuron_stats", model=model) else None
    if scanned is None or not scanned.height:
        return
    first: dict[int, str] = {}
    for r in scanned.iter_rows(named=True):
        first.setdefault(int(r["layer"]), r["corpus"])
    for card in cards:
        corpus = first.get(int(card["layer"]))
        if corpus is not None:
            render_neuron(Path(store_root), out_dir, model, corpus, int(card["layer"]), int(card["neuron"]))
            card["page"] = page_path(Path("."), model, corpus, int(card["layer"]), int(card["neuron"])).as_posix()


def _finding(con, p: dict, run: dict | None, n_scored: int, ablated: bool) -> dict:
    """The headline's counts: significant, replicated on held-out groups, and validated
    where ablation ran; ``too_few`` when even a perfect neuron could not pass q < alpha."""
    f = query(con, "finding", **p).to_dicts()[0]
    min_p = _f(run.get("min_p")) if run else None
    f["min_p"] = min_p
    f["design"] = run.get("design") if run else None
    f["too_few"] = min_p is not None and min_p * max(1, n_scored) > ALPHA
    f["ablated"] = ablated
    f["n_found"] = f["n_found_validated"] if ablated else f["n_replicated"]
    return f


def _overlap(con, p: dict, k: int) -> dict | None:
    """Top-k agreement of our ranking with the probeless and the elastic-net probe rankings."""
    o = query(con, "ranking_overlap", k=k, **p).to_dicts()[0]
    if not o["n_probeless"]:
        return None
    o["k"] = k
    return o


def _cards(con, c: Charts, model: str, concept: str, entry: Entry, top: list[dict],
           singles: pl.DataFrame | None, notes: dict[str, str]) -> list[dict]:
    if not top:
        return []
    p = {"model": model, "concept": concept}
    sel = [(int(t["layer"]), int(t["neuron"])) for t in top]
    stage_neuron_values(con, model, concept, sel)
    have_acts = con.sql("SELECT count(*) FROM neuron_values").fetchall()[0][0] > 0
    hist = query(con, "histograms", bins=HIST_BINS) if have_acts else None
    groups = query(con, "group_consistency") if have_acts else None
    if not have_acts:
        notes["cards_acts"] = ("The store has no activations for these neurons' layers, so the "
                               "histograms and the per-group breakdown are not shown.")
    layers = [s[0] for s in sel]
    neurons = [s[1] for s in sel]
    stored_top = has_rows(con, "top_examples", **p)
    if stored_top and entry.modality == "text":
        tops = query(con, "top_examples", layers=layers, neurons=neurons, n=5, **p)
    elif have_acts:
        tops = query(con, "top_pooled", n=6 if entry.modality == "vision" else 5)
        if entry.modality == "vision":
            notes["cards_top"] = ("The store holds pooled activations, not spatial maps: each card shows "
                                  "the images with the highest pooled activation of the channel.")
        if entry.modality == "text":
            notes["cards_top"] = ("No token-level top examples are stored for this concept: each card "
                                  "shows the probe examples with the highest pooled activation instead.")
    else:
        tops = None
    cards = []
    for t in top:
        key = (pl.col("layer") == t["layer"]) & (pl.col("neuron") == t["neuron"])
        card = dict(t)
        card["hist_id"] = None
        if hist is not None:
            h = hist.filter(key)
            if h.height:
                card["hist_id"] = c.add(ch.histogram(h, _f(t["range_lo"]), _f(t["range_hi"])),
                                        f"hist-{t['layer']}-{t['neuron']}")
        card["groups"] = groups.filter(key).to_dicts() if groups is not None else []
        exs = []
        if tops is not None:
            for r in tops.filter(key).iter_rows(named=True):
                ex = {"activation": _f(r["activation"]), "label": r.get("label"),
                      "text": r.get("text"), "tokens": None, "img": None}
                if r.get("tokens"):
                    ex["tokens"] = _display_tokens(list(r["tokens"]), list(r["token_acts"] or []))
                if entry.modality == "vision" and r.get("text"):
                    ex["img"] = thumbnail(r["text"])
                exs.append(ex)
        card["examples"] = exs
        card["ablations"] = (singles.filter(key).to_dicts() if singles is not None else [])
        cards.append(card)
    return cards


# ---------------------------------------------------------------------------------------
# two models
# ---------------------------------------------------------------------------------------
def render_compare(store_root: str | Path, model_a: str, model_b: str, out_dir: str | Path, *,
                   con: duckdb.DuckDBPyConnection | None = None, entries: list[Entry] | None = None,
                   index_link: bool | None = None) -> Path:
    """Two models side by side by relative depth, to `<out_dir>/compare__A__vs__B.html`."""
    out_dir = Path(out_dir)
    con = con or connect(store_root)
    entries = entries if entries is not None else catalog(con)
    check(entries, model_a, None)
    check(entries, model_b, None)
    ca = {e.concept for e in entries if e.model == model_a}
    cb = {e.concept for e in entries if e.model == model_b}
    shared = sorted(ca & cb)
    c = Charts()
    n_layers = {m: max((e.n_layers for e in entries if e.model == m), default=0) for m in (model_a, model_b)}
    bins = max(2, min(DEPTH_BINS, *n_layers.values()))     # no empty bins for the shallower model
    ds = query(con, "depth_share", model_a=model_a, model_b=model_b, bins=bins)
    ds = ds.filter(pl.col("concept").is_in(shared))
    chart_id = c.add(ch.depth_compare(ds, bins, [model_a, model_b]), "depth") if ds.height else None
    ov = query(con, "overview").filter(pl.col("concept").is_in(shared) &
                                       pl.col("model").is_in([model_a, model_b]))
    rows = []
    for concept in shared:
        row = {"concept": concept, "models": []}
        for m in (model_a, model_b):
            o = ov.filter((pl.col("model") == m) & (pl.col("concept") == concept))
            d = ds.filter((pl.col("model") == m) & (pl.col("concept") == concept))
            peak = None
            if d.height and d["n_sig"].sum() > 0:
                b = d.sort(["share", "bin"], descending=[True, False]).row(0, named=True)["bin"]
                peak = (b + 0.5) / bins
            orow = o.row(0, named=True) if o.height else {}
            row["models"].append({"model": m, "n_sig": orow.get("n_sig"), "n_scored": orow.get("n_scored"),
                                  "top_neuron": orow.get("top_neuron"), "top_score": _f(orow.get("top_score")),
                                  "n_validated": orow.get("n_validated"), "peak": peak,
                                  "href": report_name(m, concept)})
        pa_, pb_ = row["models"][0]["peak"], row["models"][1]["peak"]
        row["shift"] = None if pa_ is None or pb_ is None else pb_ - pa_
        rows.append(row)
    ctx = dict(kind="compare", title=f"{model_a} vs {model_b}", model_a=model_a, model_b=model_b,
               shared=shared, only_a=sorted(ca - cb), only_b=sorted(cb - ca), rows=rows,
               n_layers=n_layers, chart_id=chart_id, bins=bins, alpha=ALPHA,
               have_reports={(r["concept"], m["model"]): (out_dir / m["href"]).exists()
                             for r in rows for m in r["models"]},
               index_link=(out_dir / "index.html").exists() if index_link is None else index_link,
               generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    return render_page("compare.html.j2", out_dir / compare_name(model_a, model_b), c, **ctx)


# ---------------------------------------------------------------------------------------
# the report set
# ---------------------------------------------------------------------------------------
def _model_modality(entries: list[Entry]) -> dict[str, str]:
    votes: dict[str, Counter] = {}
    for e in entries:
        votes.setdefault(e.model, Counter())[e.modality] += 1
    return {m: v.most_common(1)[0][0] for m, v in votes.items()}


def render_set(store_root: str | Path, out_dir: str | Path, models: list[str] | None = None,
               concepts: list[str] | None = None, *, top_n: int = TOP_N,
               progress: bool | None = None) -> Path:
    """Every model × concept report, the comparison pages, and `<out_dir>/index.html`."""
    out_dir = Path(out_dir)
    con = connect(store_root)
    entries, chosen, modality, pairs = _chosen(con, models, concepts)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    show = sys.stderr.isatty() if progress is None else progress
    bar = Progress(TextColumn("[bold]reports[/]"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.description}"), TimeElapsedColumn(),
                   console=Console(stderr=True), disable=not show, transient=False)
    with bar:
        task = bar.add_task("", total=len(chosen) + len(pairs) + 1)
        for e in chosen:
            bar.update(task, description=f"{e.model} × {e.concept}")
            render_report(store_root, e.model, e.concept, out_dir, top_n=top_n, con=con,
                          entries=entries, index_link=True)
            bar.advance(task)
        for a, b in pairs:
            bar.update(task, description=f"{a} vs {b}")
            render_compare(store_root, a, b, out_dir, con=con, entries=entries, index_link=True)
            bar.advance(task)
        bar.update(task, description="index")
        path = _render_index(con, out_dir, chosen, modality, pairs)
        bar.advance(task)
    return path


def render_index(store_root: str | Path, out_dir: str | Path, models: list[str] | None = None,
                 concepts: list[str] | None = None) -> Path:
    """`<out_dir>/index.html` alone (its links lead to the pages `render_set` writes)."""
    con = connect(store_root)
    _, chosen, modality, pairs = _chosen(con, models, concepts)
    return _render_index(con, Path(out_dir), chosen, modality, pairs)


def _chosen(con, models: list[str] | None, concepts: list[str] | None):
    """(every entry, the entries asked for, each model's modality, the pairs compared)."""
    entries = catalog(con)
    check(entries, None, None)
    for m in models or []:
        check(entries, m, None)
    for cpt in concepts or []:
        check(entries, None, cpt)
    chosen = [e for e in entries if (not models or e.model in models)
              and (e.concept in concepts if concepts else not e.lexical_control)]
    if not chosen:
        raise ReportError("no model × concept in the store matches the models and concepts asked for")
    modality = _model_modality(chosen)
    model_list = sorted(modality)
    pairs = [(a, b) for a, b in itertools.combinations(model_list, 2) if modality[a] == modality[b]]
    return entries, chosen, modality, pairs


def _render_index(con, out_dir: Path, chosen: list[Entry], modality: dict[str, str],
                  pairs: list[tuple[str, str]]) -> Path:
    keys = {(e.model, e.concept) for e in chosen}
    ov = query(con, "overview")
    ov = ov.filter(pl.struct("model", "concept").map_elements(
        lambda s: (s["model"], s["concept"]) in keys, return_dtype=pl.Boolean))
    ov = ov.with_columns(
        pl.struct("model", "concept").map_elements(lambda s: report_name(s["model"], s["concept"]),
                                                   return_dtype=pl.String).alias("href"),
        pl.col("n_found").max().alias("max_sig"),
        (pl.col("n_found").cast(pl.String) + pl.lit(" found · ") + pl.col("n_sig").cast(pl.String)
         + pl.lit(" sig")).alias("label"))
    c = Charts()
    chart_id = c.add(ch.overview(ov), "overview")
    models = sorted({e.model for e in chosen})
    concepts = sorted({e.concept for e in chosen})
    cells = {(r["model"], r["concept"]): r for r in ov.to_dicts()}
    max_sig = max([r["n_found"] for r in cells.values()] or [1]) or 1
    n_layers = {m: max(e.n_layers for e in chosen if e.model == m) for m in models}
    best = ov.sort("top_score", descending=True, nulls_last=True).head(1).to_dicts()
    ctx = dict(kind="index", title="NeuroLens report set", models=models, concepts=concepts,
               cells=cells, max_sig=max_sig, chart_id=chart_id, modality=modality, n_layers=n_layers,
               pairs=[{"a": a, "b": b, "href": compare_name(a, b), "modality": modality[a]}
                      for a, b in pairs],
               n_reports=len(chosen), best=best[0] if best else None, alpha=ALPHA, spec_min=SPECIFICITY_MIN,
               index_link=False, report_name=report_name,
               generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    return render_page("index.html.j2", out_dir / "index.html", c, **ctx)
