-- How related two concepts are in one model: the correlation of their selectivities over every neuron scored for both.
SELECT a.concept AS concept_a, b.concept AS concept_b,
       corr(a.selectivity, b.selectivity) AS r, count(*) AS n
FROM scores a
JOIN scores b ON a.model = b.model AND a.layer = b.layer AND a.neuron = b.neuron
WHERE a.model = $model
  AND a.concept < b.concept
GROUP BY ALL
ORDER BY concept_a, concept_b
