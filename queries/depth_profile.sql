-- description: Share of significant neurons (q_value < alpha) per bin of relative depth (depth = layer/(n_layers-1)); one block per concept.
-- param: model VARCHAR
-- param: concept VARCHAR = NULL
-- param: bins INTEGER = 10
-- param: alpha DOUBLE = ALPHA
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
    count(*) FILTER (WHERE q_value < $alpha) AS n_significant,
    count(*) FILTER (WHERE q_value < $alpha) / count(*) AS share_significant,
    avg(selectivity) FILTER (WHERE q_value < $alpha) AS mean_selectivity_significant
FROM binned
GROUP BY model, concept, depth_bin
ORDER BY concept, depth_bin
