"""The page of one scanned neuron: its top corpus excerpts (token shading = activation), samples
from quantile intervals of its excerpt maxima, a histogram with each concept's probe range
shaded, its logit effects, and the concepts that rank it. Self-contained (inline SVG, no
script from the network); every corpus string is escaped by the template."""
from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np

from .data import connect, query
from .html import Charts, render_page

#: quantile intervals of the excerpt maxima shown as samples, top first
INTERVALS = (("top 0.1%", 0.999, 1.0), ("0.99–0.999", 0.99, 0.999), ("0.9–0.99", 0.9, 0.99),
             ("0.5–0.9", 0.5, 0.9), ("below the median", 0.0, 0.5))


def page_path(reports_root: Path, model: str, corpus: str, layer: int, neuron: int) -> Path:
    return Path(reports_root) / "neurons" / model / corpus / f"L{layer}.N{neuron}.html"


def _tokens(tokens: list[str] | None, acts: list[float] | None, peak: float, at: int | None) -> list[dict]:
    out = []
    for i, t in enumerate(tokens or []):
        a = acts[i] if acts is not None and i < len(acts) else None
        alpha = 0.0 if a is None or not math.isfinite(a) or peak <= 0 else max(0.0, min(1.0, a / peak))
        out.append({"text": t, "act": a, "alpha": round(alpha, 3), "peak": i == at})
    return out


def _hist_svg(stats: dict, ranges: list[dict], w: int = 560, h: int = 140) -> dict:
    """Bars of the token histogram (log counts) with the concept ranges as bands."""
    hist = np.asarray(stats["hist"], dtype=float)
    lo, width = float(stats["hist_lo"]), float(stats["hist_width"])
    nb = len(hist)
    # outer bins drawn one bin wide beyond the inner ones
    x0, x1 = lo - width, lo + (nb - 1) * width
    sx = lambda v: (min(max(v, x0), x1) - x0) / (x1 - x0) * w  # noqa: E731
    top = max(np.log1p(hist).max(), 1e-9)
    bars = [{"x": round(sx(x0 + i * width), 1), "w": round(max(w / nb - 1, 1), 1),
             "h": round(np.log1p(c) / top * (h - 20), 1), "n": int(c),
             "lo": x0 + i * width, "hi": x0 + (i + 1) * width} for i, c in enumerate(hist)]
    bands = [{"x": round(sx(r["range_lo"]), 1), "w": round(max(sx(r["range_hi"]) - sx(r["range_lo"]), 1), 1),
              "concept": r["concept"]} for r in ranges
             if r.get("range_lo") is not None and r.get("range_hi") is not None]
    return {"w": w, "h": h, "bars": bars, "bands": bands, "x0": x0, "x1": x1}


def _interval_of_bins(hist_max: list[int]) -> list[str]:
    """The quantile interval each excerpt-max bin belongs to (by the quantile of its middle)."""
    c = np.cumsum(hist_max, dtype=float)
    total = c[-1] if len(c) and c[-1] > 0 else 1.0
    mid = (c - np.asarray(hist_max) / 2) / total
    out = []
    for m in mid:
        out.append(next(name for name, a, b in INTERVALS if a <= m <= b or (a == 0.0 and m < b)))
    return out


def neuron_context(store_root: Path, model: str, corpus: str, layer: int, neuron: int) -> dict[str, Any]:
    con = connect(store_root)
    try:
        p = {"model": model, "corpus": corpus, "layer": layer, "neuron": neuron}
        rows = query(con, "neuron_corpus_top", **p).to_dicts()
        st = query(con, "neuron_stats", **p).to_dicts()
        logits = query(con, "neuron_logits", model=model, layer=layer, neuron=neuron).to_dicts()
        concepts = query(con, "neuron_concepts", **p).to_dicts()
    finally:
        con.close()
    stats = st[0] if st else None
    peak = max([abs(r["activation"]) for r in rows if r["kind"] in ("top", "bottom")] or [1.0])

    def ex(r: dict) -> dict:
        at = r["position"] - r["window_start"]
        acts = r["token_acts"] if r["token_acts"] else None
        sign = -1.0 if r["kind"] == "bottom" else 1.0
        return {"activation": r["activation"], "excerpt": r["excerpt_id"], "word": r["word"],
                "category": r["category"],
                "tokens": _tokens(r["tokens"], None if acts is None else [sign * a for a in acts],
                                  peak, at)}

    top = [ex(r) for r in sorted((r for r in rows if r["kind"] == "top"), key=lambda r: r["rank"])]
    bottom = [ex(r) for r in sorted((r for r in rows if r["kind"] == "bottom"), key=lambda r: r["rank"])]
    intervals: dict[str, list] = {name: [] for name, _, _ in INTERVALS}
    if stats is not None:
        of = _interval_of_bins(stats["hist_max"])
        for r in rows:
            if r["kind"] == "interval":
                intervals[of[r["bin"]]].append(ex(r))
    for v in intervals.values():
        v.sort(key=lambda e: -e["activation"])
    rnd = [ex(r) for r in sorted((r for r in rows if r["kind"] == "random"), key=lambda r: r["rank"])]
    return {"model": model, "corpus": corpus, "layer": layer, "neuron": neuron, "name": f"L{layer}.N{neuron}",
            "stats": stats, "top": top, "bottom": bottom,
            "intervals": [(k, v[:6]) for k, v in intervals.items() if v], "random": rnd,
            "boost": [r for r in logits if r["rank"] > 0], "suppress": [r for r in logits if r["rank"] < 0],
            "concepts": concepts, "hist": _hist_svg(stats, concepts) if stats else None}


def render_neuron(store_root: Path, reports_root: Path, model: str, corpus: str, layer: int, neuron: int
                  ) -> Path:
    ctx = neuron_context(store_root, model, corpus, layer, neuron)
    path = page_path(reports_root, model, corpus, layer, neuron)
    return render_page("neuron.html.j2", path, Charts(), title=f"{model} {ctx['name']}",
                       generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                       index_link=False, **ctx)
