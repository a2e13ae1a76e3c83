-- description: The top-ranked neurons of one model for one concept, with their scores (best first).
-- param: model VARCHAR
-- param: concept VARCHAR
-- param: k INTEGER = 20
SELECT
    model, concept, rank, layer, neuron, depth,
    score, selectivity, auc, cohens_d, p_value, q_value,
    consistency, importance, importance_pct,
    range_lo, range_hi, range_overlap, run_id
FROM scores
WHERE model = $model
  AND concept = $concept
  AND rank IS NOT NULL
ORDER BY rank, layer, neuron
LIMIT $k
