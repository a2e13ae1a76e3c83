-- Every neuron of one model that is significant for a concept (q < alpha, the concept's
-- direction, above the effect gate), not lexical, and positively selective (the direction
-- comes from the cells' test, the selectivity from the examples: they can disagree near 0):
-- the evidence labels are built from.
SELECT concept, layer, neuron, selectivity, q_value, consistency, rank, score
FROM scores
WHERE model = $model
  AND significant
  AND NOT coalesce(lexical, false)
  AND q_value < $alpha
  AND selectivity > 0
ORDER BY layer, neuron, selectivity DESC, concept
