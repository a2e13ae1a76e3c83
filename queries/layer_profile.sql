-- description: Share of significant neurons (q_value < alpha, concept-preferring, effect above the gate, not lexical) per layer, with the layer's relative-depth bin; one block per concept.
-- param: model VARCHAR
-- param: concept VARCHAR = NULL
-- param: bins INTEGER = 10
SELECT
    model, concept, layer,
    any_value(n_layers) AS n_layers,
    any_value(depth) AS depth,
    least(CAST(floor(any_value(depth) * $bins + 1e-9) AS INTEGER), $bins - 1) AS depth_bin,
    count(*) AS n_neurons,
    count(*) FILTER (WHERE (significant AND NOT lexical)) AS n_significant,
    count(*) FILTER (WHERE (significant AND NOT lexical)) / count(*) AS share_significant,
    count(rank) AS n_ranked,
    avg(selectivity) FILTER (WHERE (significant AND NOT lexical)) AS mean_selectivity_significant,
    max(score) AS max_score
FROM scores
WHERE model = $model
  AND ($concept IS NULL OR concept = $concept)
GROUP BY model, concept, layer
ORDER BY concept, layer
