-- Every neuron of one model that is significant for a concept (q < alpha, the concept's
-- direction, above the effect gate) and not lexical: the evidence labels are built from.
SELECT concept, layer, neuron, selectivity, q_value, consistency, rank, score
FROM scores
WHERE model = $model
  AND significant
  AND NOT coalesce(lexical, false)
  AND q_value < $alpha
ORDER BY layer, neuron, selectivity DESC, concept
