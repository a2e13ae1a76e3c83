-- One row per model x concept: significant neurons, best neuron, validated neurons (single-neuron z >= 3).
WITH s AS (
    SELECT model, concept, count(*) AS n_scored,
           count(*) FILTER (WHERE q_value < $alpha) AS n_sig,
           max(score) FILTER (WHERE q_value < $alpha) AS top_score,
           arg_max('L' || layer || '.N' || neuron, score) FILTER (WHERE q_value < $alpha) AS top_neuron,
           max(selectivity) AS max_selectivity
    FROM scores GROUP BY ALL
), v AS (
    SELECT model, concept, count(DISTINCT (layer, neuron)) AS n_validated
    FROM ablations WHERE mode = 'single' AND z >= $z_min GROUP BY ALL
), a AS (
    SELECT model, concept, max(z) AS best_z
    FROM ablations WHERE mode = 'cumulative' GROUP BY ALL
)
SELECT s.*, coalesce(v.n_validated, 0) AS n_validated, a.best_z
FROM s LEFT JOIN v USING (model, concept) LEFT JOIN a USING (model, concept)
ORDER BY s.model, s.concept;
