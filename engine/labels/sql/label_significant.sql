-- Every neuron of one model that is significant and positively selective for a concept (the evidence labels are built from).
SELECT concept, layer, neuron, selectivity, q_value, consistency, rank, score
FROM scores
WHERE model = $model
  AND q_value < $alpha
  AND selectivity > 0
ORDER BY layer, neuron, selectivity DESC, concept
