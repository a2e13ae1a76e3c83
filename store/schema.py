"""Arrow schemas of the store's tables (DESIGN: "Store"), and their partition keys.

`activations.acts` is a fixed-size list whose width is the layer's neuron count, so
its schema is made per layer by `activations_schema(n)`.
"""
from __future__ import annotations

import pyarrow as pa

PARTITIONS: dict[str, tuple[str, ...]] = {
    "runs": (),
    "examples": ("model", "concept"),
    "activations": ("model", "concept", "layer"),
    "scores": ("model", "concept"),
    "ablations": ("model", "concept"),
    "labels": ("model",),
    "top_examples": ("model", "concept"),
    "corpus_top": ("model", "corpus", "layer"),
    "neuron_stats": ("model", "corpus", "layer"),
    "logit_effects": ("model",),
    "corpus_evidence": ("model", "concept", "corpus"),
}

RUNS = pa.schema([
    ("run_id", pa.string()), ("model", pa.string()), ("model_ref", pa.string()),
    ("model_sha", pa.string()), ("concept", pa.string()), ("probe_sha", pa.string()),
    ("n_pos", pa.int32()), ("n_neg", pa.int32()), ("layers", pa.list_(pa.int32())),
    ("pooling", pa.string()), ("device", pa.string()), ("world_size", pa.int32()),
    ("tokens", pa.int64()), ("seconds_extract", pa.float64()), ("seconds_score", pa.float64()),
    ("seconds_ablate", pa.float64()), ("versions", pa.string()), ("status", pa.string()),
    ("dtype", pa.string()), ("started_at", pa.timestamp("us", tz="UTC")),
    ("finished_at", pa.timestamp("us", tz="UTC")),
    ("n_units", pa.int32()), ("design", pa.string()), ("min_p", pa.float64()),
])

EXAMPLES = pa.schema([
    ("example_id", pa.int32()), ("text", pa.string()), ("label", pa.int8()),
    ("grp", pa.string()), ("split", pa.string()), ("target", pa.string()),
    ("span_start", pa.int32()), ("span_end", pa.int32()), ("pair_id", pa.int32()),
    ("run_id", pa.string()),
])


def activations_schema(n_neurons: int) -> pa.Schema:
    return pa.schema([
        ("example_id", pa.int32()),
        ("acts", pa.list_(pa.float16(), n_neurons)),
        ("run_id", pa.string()),
    ])


SCORES = pa.schema([
    ("layer", pa.int32()), ("neuron", pa.int32()), ("n_layers", pa.int32()), ("depth", pa.float64()),
    ("selectivity", pa.float64()), ("auc", pa.float64()), ("cohens_d", pa.float64()),
    ("mean_pos", pa.float64()), ("mean_neg", pa.float64()), ("std_pos", pa.float64()),
    ("std_neg", pa.float64()), ("p_value", pa.float64()), ("q_value", pa.float64()),
    ("effect", pa.float64()), ("direction", pa.int8()), ("significant", pa.bool_()),
    ("opposite", pa.bool_()), ("lexical", pa.bool_()),
    ("consistency", pa.float64()), ("tpr_at_5fpr", pa.float64()),
    ("importance", pa.float64()), ("importance_pct", pa.float64()),
    ("score", pa.float64()), ("rank", pa.int32()), ("range_lo", pa.float64()),
    ("range_hi", pa.float64()), ("range_overlap", pa.float64()), ("n_units", pa.int32()),
    ("selectivity_test", pa.float64()), ("p_test", pa.float64()), ("q_test", pa.float64()),
    ("replicated", pa.bool_()),
    ("rank_probeless", pa.int32()), ("rank_probe", pa.int32()), ("run_id", pa.string()),
])

ABLATIONS = pa.schema([
    ("method", pa.string()), ("mode", pa.string()), ("k", pa.int32()), ("layer", pa.int32()),
    ("neuron", pa.int32()), ("metric", pa.string()), ("base_conf", pa.float64()),
    ("ablated_conf", pa.float64()), ("drop", pa.float64()), ("random_drop_mean", pa.float64()),
    ("random_drop_std", pa.float64()), ("z", pa.float64()), ("off_target_drop", pa.float64()),
    ("n_examples", pa.int32()), ("neurons", pa.list_(pa.string())),
    ("band", pa.int32()), ("n_controls", pa.int32()), ("p_value", pa.float64()),
    ("q_value", pa.float64()), ("specificity", pa.float64()), ("validated", pa.bool_()),
    ("run_id", pa.string()),
])

LABELS = pa.schema([
    ("layer", pa.int32()), ("neuron", pa.int32()), ("family", pa.string()), ("label", pa.string()),
    ("top_tokens", pa.list_(pa.string())), ("concepts", pa.list_(pa.string())),
    ("polysemantic", pa.bool_()), ("explanation_score", pa.float64()), ("run_id", pa.string()),
])

TOP_EXAMPLES = pa.schema([
    ("layer", pa.int32()), ("neuron", pa.int32()), ("example_id", pa.int32()),
    ("activation", pa.float64()), ("tokens", pa.list_(pa.string())),
    ("token_acts", pa.list_(pa.float32())), ("run_id", pa.string()),
])

#: corpus scans (DESIGN "Corpus scans"): kind is top | bottom (gated MLPs, by the minimum) |
#: interval (a hash-keyed sample of the excerpts whose maximum falls in histogram bin `bin`) |
#: random (the same keys over every bin: a uniform sample of excerpts); `rank` orders rows of one
#: kind; tokens/token_acts are the window around the maximum (token_acts for top/bottom only)
CORPUS_TOP = pa.schema([
    ("layer", pa.int32()), ("neuron", pa.int32()), ("kind", pa.string()), ("rank", pa.int32()),
    ("bin", pa.int32()), ("excerpt_id", pa.int64()), ("position", pa.int32()),
    ("activation", pa.float32()), ("window_start", pa.int32()), ("tokens", pa.list_(pa.string())),
    ("token_acts", pa.list_(pa.float32())), ("word", pa.string()), ("category", pa.string()),
    ("run_id", pa.string()),
])

#: hist / hist_max: counts of tokens / of excerpt maxima per bin, bin 0 below hist_lo, the last
#: above hist_lo + (len - 2) * hist_width; quantiles: the upper edge of the bin where the token
#: count reaches 0.5, 0.9, 0.99, 0.999; gate_up_signs: (g<=0,u<=0), (g<=0,u>0), (g>0,u<=0), (g>0,u>0)
NEURON_STATS = pa.schema([
    ("layer", pa.int32()), ("neuron", pa.int32()), ("n_tokens", pa.int64()), ("n_excerpts", pa.int64()),
    ("mean", pa.float64()), ("std", pa.float64()), ("frac_active", pa.float64()),
    ("hist_lo", pa.float32()), ("hist_width", pa.float32()), ("hist", pa.list_(pa.int64())),
    ("hist_max", pa.list_(pa.int64())), ("quantiles", pa.list_(pa.float32())),
    ("gate_up_signs", pa.list_(pa.int64())), ("run_id", pa.string()),
])

LOGIT_EFFECTS = pa.schema([
    ("layer", pa.int32()), ("neuron", pa.int32()), ("rank", pa.int32()), ("token_id", pa.int64()),
    ("token", pa.string()), ("effect", pa.float32()), ("run_id", pa.string()),
])

CORPUS_EVIDENCE = pa.schema([
    ("layer", pa.int32()), ("neuron", pa.int32()), ("rank", pa.int32()), ("corpus_precision", pa.float64()),
    ("base_precision", pa.float64()), ("range_precision", pa.float64()), ("range_tokens", pa.int64()),
    ("n_categories", pa.int32()), ("categories", pa.list_(pa.string())), ("run_id", pa.string()),
])

SCHEMAS: dict[str, pa.Schema] = {
    "runs": RUNS, "examples": EXAMPLES, "scores": SCORES, "ablations": ABLATIONS,
    "labels": LABELS, "top_examples": TOP_EXAMPLES, "corpus_top": CORPUS_TOP,
    "neuron_stats": NEURON_STATS, "logit_effects": LOGIT_EFFECTS, "corpus_evidence": CORPUS_EVIDENCE,
}
TABLES = tuple(PARTITIONS)
