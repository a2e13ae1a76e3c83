"""Altair (Vega-Lite) chart specs for the reports. Each builder returns a plain dict spec
with its data inlined; the page embeds it as JSON and vega-embed draws it offline."""
from __future__ import annotations

import copy
import functools
import math
from typing import Any

import altair as alt
import polars as pl

from .sankey import concept_colors

STATUS_DOMAIN = ["validated by ablation", "significant (q < 0.05)", "neither"]
STATUS_RANGE = ["#e45756", "#4c78a8", "#c7ccd4"]
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


def rows(df: pl.DataFrame) -> list[dict]:
    return [{k: _clean(v) for k, v in r.items()} for r in df.to_dicts()]


class _Datasets(dict):
    """Chart data kept outside altair (as top-level `datasets`), so building a spec never
    walks thousands of data points through the schema wrappers."""

    def __call__(self, name: str, values: list[dict]) -> alt.NamedData:
        self[name] = values
        return alt.NamedData(name)


def _spec(chart: alt.TopLevelMixin, data: _Datasets) -> dict:
    spec = chart.configure(font=FONT).configure_view(stroke=None).configure_axis(
        labelColor="#374151", titleColor="#374151", gridColor="#eef0f3",
        domainColor="#9ca3af").configure_legend(labelColor="#374151", titleColor="#374151",
                                                orient="bottom").to_dict(validate=False)
    spec.pop("$schema", None)      # the inlined Vega-Lite is the one that draws it
    spec["datasets"] = {**spec.get("datasets", {}), **data}
    return spec


def layer_map(df: pl.DataFrame, n_layers: int) -> dict:
    """Layer × neuron-index blocks coloured by the best selectivity in the block."""
    D = _Datasets()
    df = df.with_columns((pl.col("last_neuron") + 1).alias("end"))
    base = alt.Chart(D("d1", rows(df)))
    chart = base.mark_rect(stroke="white", strokeWidth=0.3).encode(
        x=alt.X("first_neuron:Q", title="neuron index", scale=alt.Scale(nice=False)),
        x2="end:Q",
        y=alt.Y("layer:O", title="layer", sort="ascending"),
        color=alt.Color("max_selectivity:Q", title="best selectivity",
                        scale=alt.Scale(scheme="blues", domain=[0, 1], clamp=True)),
        tooltip=[alt.Tooltip("layer:O"), alt.Tooltip("first_neuron:Q", title="neurons from"),
                 alt.Tooltip("last_neuron:Q", title="neurons to"),
                 alt.Tooltip("best_neuron:N", title="best neuron"),
                 alt.Tooltip("max_selectivity:Q", title="selectivity", format=".3f"),
                 alt.Tooltip("n_sig:Q", title="significant here")],
    ).properties(width="container", height=max(120, min(16 * n_layers, 420)))
    return _spec(chart, D)


def sweep_share(df: pl.DataFrame, concept: str) -> dict:
    """Layer × concept: the share of each layer's neurons significant for each concept."""
    D = _Datasets()
    df = df.with_columns((pl.col("concept") == concept).alias("current"),
                         pl.col("share").max().alias("max_share"))
    base = alt.Chart(D("d2", rows(df))).encode(
        x=alt.X("concept:N", title=None, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("layer:O", title="layer"))
    rect = base.mark_rect(stroke="white", strokeWidth=0.5).encode(
        color=alt.Color("share:Q", title="share significant", scale=alt.Scale(scheme="oranges")),
        tooltip=[alt.Tooltip("concept:N"), alt.Tooltip("layer:O"),
                 alt.Tooltip("n_sig:Q", title="significant"), alt.Tooltip("n_scored:Q", title="scored"),
                 alt.Tooltip("share:Q", format=".2%")])
    text = base.mark_text(fontSize=10).encode(
        text=alt.condition("datum.n_sig > 0", "n_sig:Q", alt.value("")),
        color=alt.condition("datum.share > 0.6 * datum.max_share", alt.value("white"), alt.value("#111827")))
    n_layers = df["layer"].n_unique()
    return _spec((rect + text).properties(width="container", height=max(120, min(16 * n_layers, 420))), D)


def scatter(df: pl.DataFrame) -> dict:
    """Selectivity vs consistency; size = importance percentile; colour = evidence."""
    D = _Datasets()
    order = {s: i for i, s in enumerate(reversed(STATUS_DOMAIN))}
    df = df.with_columns(pl.col("status").replace_strict(order, default=0).alias("z_order")
                         ).sort("z_order")
    chart = alt.Chart(D("d3", rows(df))).mark_circle(stroke="white", strokeWidth=0.3).encode(
        opacity=alt.condition("datum.status == 'neither'", alt.value(0.35), alt.value(0.85)),
        x=alt.X("selectivity:Q", title="selectivity (2·AUC − 1)", scale=alt.Scale(domain=[-1, 1])),
        y=alt.Y("consistency:Q", title="consistency (share of train groups where the neuron follows the concept)",
                scale=alt.Scale(domain=[0, 1])),
        size=alt.Size("importance_pct:Q", title="importance pct", scale=alt.Scale(range=[4, 200])),
        color=alt.Color("status:N", title=None, scale=alt.Scale(domain=STATUS_DOMAIN, range=STATUS_RANGE)),
        order=alt.Order("z_order:Q"),
        tooltip=[alt.Tooltip("name:N", title="neuron"), alt.Tooltip("label:N"),
                 alt.Tooltip("selectivity:Q", format=".3f"),
                 alt.Tooltip("consistency:Q", format=".3f"),
                 alt.Tooltip("importance_pct:Q", title="importance pct", format=".3f"),
                 alt.Tooltip("score:Q", format=".3f"),
                 alt.Tooltip("q_value:Q", title="q", format=".2e"),
                 alt.Tooltip("status:N")],
    ).properties(width="container", height=380).interactive()
    return _spec(chart, D)


def ablation(curve: pl.DataFrame, random_sets: pl.DataFrame) -> dict:
    """Drop of the top-k neurons vs random sets of k, one panel per method.

    The band is mean ± 2σ of the random sets (from the per-set rows when the store has
    them, else from the summary columns of the top-k rows); dots are individual sets."""
    D = _Datasets()
    methods = [m for m in ("zero", "mean", "range") if m in set(curve["method"])] + sorted(
        set(curve["method"]) - {"zero", "mean", "range"})
    recs: list[dict] = []
    if random_sets.height:
        stats = random_sets.group_by("method", "k").agg(
            pl.col("drop").mean().alias("mean"), pl.col("drop").std().alias("std"))
    else:
        stats = curve.select("method", "k", pl.col("random_drop_mean").alias("mean"),
                             pl.col("random_drop_std").alias("std"))
    for r in stats.drop_nulls("mean").to_dicts():
        sd = r["std"] or 0.0
        recs.append({"method": r["method"], "k": r["k"], "kind": "band", "mean": r["mean"],
                     "lo": r["mean"] - 2 * sd, "hi": r["mean"] + 2 * sd})
    for r in random_sets.to_dicts():
        recs.append({"method": r["method"], "k": r["k"], "kind": "random set", "drop": r["drop"]})
    for r in curve.to_dicts():
        recs.append({"method": r["method"], "k": r["k"], "kind": "top-k", "drop": r["drop"],
                     "z": r["z"], "random_mean": r["random_drop_mean"], "off": r["off_target_drop"]})
    recs = [{k: _clean(v) for k, v in r.items()} for r in recs]
    base = alt.Chart().encode(x=alt.X("k:Q", title="k neurons ablated", scale=alt.Scale(type="log"),
                                      axis=alt.Axis(values=sorted(set(curve["k"].to_list())),
                                                    format="d")))
    band = base.transform_filter("datum.kind == 'band'").mark_area(opacity=0.25, color="#9ca3af").encode(
        y=alt.Y("lo:Q", title="confidence drop", axis=alt.Axis(format="%")), y2="hi:Q",
        tooltip=[alt.Tooltip("k:Q"), alt.Tooltip("mean:Q", title="random mean", format=".1%"),
                 alt.Tooltip("lo:Q", title="mean − 2σ", format=".1%"),
                 alt.Tooltip("hi:Q", title="mean + 2σ", format=".1%")])
    mean = base.transform_filter("datum.kind == 'band'").mark_line(
        strokeDash=[4, 3], color="#6b7280").encode(y="mean:Q")
    dots = base.transform_filter("datum.kind == 'random set'").mark_point(
        size=14, color="#6b7280", opacity=0.45, filled=True).encode(
        y="drop:Q", tooltip=[alt.Tooltip("k:Q"), alt.Tooltip("drop:Q", title="random set drop", format=".1%")])
    top = base.transform_filter("datum.kind == 'top-k'").mark_line(
        point=alt.OverlayMarkDef(size=60, filled=True, color="#e45756"), color="#e45756", strokeWidth=2.5).encode(
        y="drop:Q",
        tooltip=[alt.Tooltip("k:Q"), alt.Tooltip("drop:Q", title="top-k drop", format=".1%"),
                 alt.Tooltip("random_mean:Q", title="random mean", format=".1%"),
                 alt.Tooltip("z:Q", format=".1f"),
                 alt.Tooltip("off:Q", title="off-target drop", format=".1%")])
    layered = alt.layer(band, mean, dots, top, data=D("d4", recs)).properties(
        width=250, height=200).facet(
        column=alt.Column("method:N", title=None, sort=methods,
                          header=alt.Header(labelFontSize=13, labelFontWeight="bold")))
    return _spec(layered, D)


def histogram(hist: pl.DataFrame, lo: float | None, hi: float | None) -> dict:
    """Concept vs other activation histogram with the concept range band [lo, hi]."""
    h = hist.with_columns(pl.when(pl.col("label") == 1).then(pl.lit("concept"))
                          .otherwise(pl.lit("other")).alias("examples"))
    band = ([{"lo": lo, "hi": hi}] if lo is not None and hi is not None
            and math.isfinite(lo) and math.isfinite(hi) else [])
    spec = copy.deepcopy(_histogram_shape())     # one altair build, many cards
    spec["datasets"] = {"band": band, "bins": rows(h)}
    return spec


@functools.cache
def _histogram_shape() -> dict:
    D = _Datasets()
    band = alt.Chart(D("band", [])).mark_rect(color="#fde68a", opacity=0.55).encode(
        x="lo:Q", x2="hi:Q",
        tooltip=[alt.Tooltip("lo:Q", title="range lo", format=".2f"),
                 alt.Tooltip("hi:Q", title="range hi", format=".2f")])
    bars = alt.Chart(D("bins", [])).mark_rect(opacity=0.6).encode(
        x=alt.X("x0:Q", title="pooled activation (train split)"), x2="x1:Q",
        y=alt.Y("share:Q", title="share", axis=alt.Axis(format="%"), stack=None),
        color=alt.Color("examples:N", title=None,
                        scale=alt.Scale(domain=["concept", "other"], range=["#e45756", "#4c78a8"])),
        tooltip=[alt.Tooltip("examples:N"), alt.Tooltip("x0:Q", title="from", format=".2f"),
                 alt.Tooltip("x1:Q", title="to", format=".2f"), alt.Tooltip("n:Q", title="examples")])
    return _spec(alt.layer(band, bars).properties(width="container", height=120), D)


def depth_compare(df: pl.DataFrame, bins: int, models: list[str]) -> dict:
    """Two models by relative depth: the share of significant neurons per depth bin."""
    D = _Datasets()
    df = df.with_columns(((pl.col("bin") + 0.5) / bins).round(3).alias("depth"))
    chart = alt.Chart(D("d7", rows(df))).mark_bar().encode(
        x=alt.X("depth:O", title="relative depth (layer / (n_layers − 1))"),
        xOffset=alt.XOffset("model:N", sort=models),
        y=alt.Y("share:Q", title="share significant", axis=alt.Axis(format="%")),
        color=alt.Color("model:N", sort=models, scale=alt.Scale(range=["#4c78a8", "#f58518"])),
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("concept:N"), alt.Tooltip("depth:O"),
                 alt.Tooltip("n_sig:Q", title="significant"), alt.Tooltip("n_scored:Q", title="scored"),
                 alt.Tooltip("share:Q", format=".2%")],
    ).properties(width=330, height=170).facet(
        facet=alt.Facet("concept:N", title=None, header=alt.Header(labelFontSize=13, labelFontWeight="bold")),
        columns=2)
    return _spec(chart, D)


#: pixels a character of the overview's 12-px labels takes at most (digits and "found · sig")
LABEL_CHAR_PX = 7.5


def overview(df: pl.DataFrame) -> dict:
    """Models × concepts: findings per cell (significant, replicated on held-out groups and,
    where ablation ran, validated), each cell a link to its report.

    The longer of the two lists runs down the page (a sweep has many concepts and few
    models), so columns stay wide. A cell shows its full label where the label fits the
    column, the findings alone where only that fits, and nothing otherwise; axis labels
    that would collide are dropped, never drawn over one another."""
    D = _Datasets()
    tall = df["concept"].n_unique() > df["model"].n_unique()
    across, down = ("model", "concept") if tall else ("concept", "model")
    n_across, n_down = max(1, df[across].n_unique()), max(1, df[down].n_unique())
    axis = dict(labelOverlap="greedy", labelPadding=4, labelFontSize=11)
    base = alt.Chart(D("d8", rows(df))).encode(
        x=alt.X(f"{across}:N", title=None, axis=alt.Axis(labelAngle=0, orient="top", **axis)),
        y=alt.Y(f"{down}:N", title=None, axis=alt.Axis(**axis)))
    rect = base.mark_rect(stroke="white", strokeWidth=2, cursor="pointer").encode(
        color=alt.Color("n_found:Q", title="findings", scale=alt.Scale(scheme="blues", zero=True)),
        href="href:N",
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("concept:N"),
                 alt.Tooltip("n_found:Q", title="findings"),
                 alt.Tooltip("n_sig:Q", title="significant"),
                 alt.Tooltip("n_replicated:Q", title="replicated"),
                 alt.Tooltip("top_neuron:N", title="top neuron"),
                 alt.Tooltip("top_score:Q", title="top score", format=".3f"),
                 alt.Tooltip("n_validated:Q", title="validated")])
    col = f"(width / {n_across})"
    fits = lambda s: f"{col} >= {LABEL_CHAR_PX} * length({s}) + 10"  # noqa: E731
    shown = (f"{fits('datum.label')} ? datum.label : "
             f"({fits('toString(datum.n_found)')} ? toString(datum.n_found) : '')")
    text = base.transform_calculate(shown=shown).mark_text(fontSize=12).encode(
        text="shown:N",
        color=alt.condition("datum.n_found > datum.max_sig * 0.6", alt.value("white"), alt.value("#111827")))
    height = max(80, (30 if tall else 46) * n_down)
    return _spec((rect + text).properties(width="container", height=height), D)


__all__ = ["ablation", "concept_colors", "depth_compare", "histogram", "layer_map", "overview",
           "rows", "scatter", "sweep_share"]
