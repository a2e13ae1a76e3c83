-- The headline of one model x concept: significant neurons (train, group-level q), those that
-- also replicate on the held-out groups, and of those the ones ablation validated (the stored verdict).
WITH s AS (
    SELECT layer, neuron, q_value < $alpha AS sig, coalesce(replicated, false) AS rep, n_units
    FROM scores WHERE model = $model AND concept = $concept
), v AS (
    SELECT DISTINCT layer, neuron FROM ablations
    WHERE model = $model AND concept = $concept AND mode = 'single' AND coalesce(validated, false)
)
SELECT count(*) AS n_scored,
       count(*) FILTER (WHERE sig) AS n_sig,
       count(*) FILTER (WHERE sig AND rep) AS n_replicated,
       count(*) FILTER (WHERE sig AND rep AND v.layer IS NOT NULL) AS n_found_validated,
       max(n_units) AS n_units
FROM s LEFT JOIN v USING (layer, neuron);
