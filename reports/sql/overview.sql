-- One row per model x concept: significant neurons, those that replicate on held-out groups,
-- best neuron, validated neurons (the stored single-neuron verdict), and the findings: significant,
-- replicated and (where ablation ran) validated.
WITH s AS (
    SELECT model, concept, count(*) AS n_scored,
           count(*) FILTER (WHERE (significant AND NOT lexical)) AS n_sig,
           count(*) FILTER (WHERE (significant AND NOT lexical) AND coalesce(replicated, false)) AS n_replicated,
           max(score) FILTER (WHERE (significant AND NOT lexical)) AS top_score,
           arg_max('L' || layer || '.N' || neuron, score) FILTER (WHERE (significant AND NOT lexical)) AS top_neuron,
           max(selectivity) AS max_selectivity
    FROM scores GROUP BY ALL
), v AS (
    SELECT model, concept, count(DISTINCT (layer, neuron)) AS n_validated
    FROM ablations WHERE mode = 'single' AND coalesce(validated, false) GROUP BY ALL
), f AS (
    SELECT s.model, s.concept, count(*) AS n_found_validated
    FROM scores s JOIN (SELECT DISTINCT model, concept, layer, neuron FROM ablations
                        WHERE mode = 'single' AND coalesce(validated, false)) v USING (model, concept, layer, neuron)
    WHERE (s.significant AND NOT s.lexical) AND coalesce(s.replicated, false) GROUP BY ALL
), h AS (
    SELECT DISTINCT model, concept FROM ablations
), a AS (
    SELECT model, concept, max(z) FILTER (WHERE isfinite(z)) AS best_z
    FROM ablations WHERE mode = 'cumulative' GROUP BY ALL
)
SELECT s.*, coalesce(v.n_validated, 0) AS n_validated, a.best_z,
       CASE WHEN h.model IS NULL THEN s.n_replicated ELSE coalesce(f.n_found_validated, 0) END AS n_found,
       h.model IS NOT NULL AS ablated
FROM s LEFT JOIN v USING (model, concept) LEFT JOIN a USING (model, concept)
LEFT JOIN f USING (model, concept) LEFT JOIN h USING (model, concept)
ORDER BY s.model, s.concept;
