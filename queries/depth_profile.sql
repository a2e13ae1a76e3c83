-- description: Share of significant neurons (q_value < alpha, concept-preferring, effect above the gate, not lexical) per bin of relative depth (depth = layer/(n_layers-1)); one block per concept.
-- param: model VARCHAR
-- param: concept VARCHAR = NULL
-- param: bins INTEGER = 10
WITH binned AS (
    SELECT *, least(CAST(floor(depth * $bins + 1e-9) AS INTEGER), $bins - 1) AS depth_bin
    FROM scores
    WHERE model = $model
      AND ($concept IS NULL OR concept = $concept)
)
SELECT
    model, concept, depth_bin,
    depth_bin / $bins AS depth_lo,
    (depth_bin + 1) / $bins AS depth_hi,
    list(DISTINCT layer ORDER BY layer) AS layers,
    count(*) AS n_neurons,
    count(*) FILTER (WHERE (significant AND NOT lexical)) AS n_significant,
    count(*) FILTER (WHERE (significant AND NOT lexical)) / count(*) AS share_significant,
    avg(selectivity) FILTER (WHERE (significant AND NOT lexical)) AS mean_selectivity_significant
FROM binned
GROUP BY model, concept, depth_bin
ORDER BY concept, depth_bin
