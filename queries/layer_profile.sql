-- description: Share of significant neurons (q_value < alpha) per layer, with the layer's relative-depth bin; one block per concept.
-- param: model VARCHAR
-- param: concept VARCHAR = NULL
-- param: bins INTEGER = 10
-- param: alpha DOUBLE = ALPHA
SELECT
    model, concept, layer,
    any_value(n_layers) AS n_layers,
    any_value(depth) AS depth,
    least(CAST(floor(any_value(depth) * $bins + 1e-9) AS INTEGER), $bins - 1) AS depth_bin,
    count(*) AS n_neurons,
    count(*) FILTER (WHERE q_value < $alpha) AS n_significant,
    count(*) FILTER (WHERE q_value < $alpha) / count(*) AS share_significant,
    count(rank) AS n_ranked,
    avg(selectivity) FILTER (WHERE q_value < $alpha) AS mean_selectivity_significant,
    max(score) AS max_score
FROM scores
WHERE model = $model
  AND ($concept IS NULL OR concept = $concept)
GROUP BY model, concept, layer
ORDER BY concept, layer
