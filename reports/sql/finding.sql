-- The headline of one model x concept: significant neurons (train, group-level q, concept-preferring,
-- effect above the gate, not lexical), those that also replicate on the held-out groups (q_test),
-- and of those the ones ablation validated (the stored verdict); beside them, the neurons that pass in the
-- opposite direction and those the lexical control lit up (counted apart, never ranked).
WITH s AS (
    SELECT layer, neuron, (significant AND NOT lexical) AS sig, coalesce(replicated, false) AS rep, n_units,
           opposite, significant AND lexical AS lex
    FROM scores WHERE model = $model AND concept = $concept
), v AS (
    SELECT DISTINCT layer, neuron FROM ablations
    WHERE model = $model AND concept = $concept AND mode = 'single' AND coalesce(validated, false)
)
SELECT count(*) AS n_scored,
       count(*) FILTER (WHERE sig) AS n_sig,
       count(*) FILTER (WHERE sig AND rep) AS n_replicated,
       count(*) FILTER (WHERE sig AND rep AND v.layer IS NOT NULL) AS n_found_validated,
       max(n_units) AS n_units,
       count(*) FILTER (WHERE opposite) AS n_opposite,
       count(*) FILTER (WHERE lex) AS n_lexical
FROM s LEFT JOIN v USING (layer, neuron);
