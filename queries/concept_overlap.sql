-- description: Neurons of one model significant (q_value < alpha, concept-preferring, effect above the gate, not lexical) for several concepts: polysemantic candidates, most concepts first; every model unless one is given.
-- param: model VARCHAR = NULL
-- param: min_concepts INTEGER = 2
SELECT
    model, layer, neuron,
    any_value(depth) AS depth,
    count(DISTINCT concept) AS n_concepts,
    list(DISTINCT concept ORDER BY concept) AS concepts,
    avg(selectivity) AS mean_selectivity,
    max(score) AS max_score,
    min(rank) AS best_rank
FROM scores
WHERE ($model IS NULL OR model = $model)
  AND (significant AND NOT lexical)
GROUP BY model, layer, neuron
HAVING count(DISTINCT concept) >= $min_concepts
ORDER BY n_concepts DESC, layer, neuron
