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

SCHEMAS: dict[str, pa.Schema] = {
    "runs": RUNS, "examples": EXAMPLES, "scores": SCORES, "ablations": ABLATIONS,
    "labels": LABELS, "top_examples": TOP_EXAMPLES,
}
TABLES = tuple(PARTITIONS)
