-- The concepts that rank this neuron, with the probe range and the corpus evidence.
SELECT s.concept, s.rank, s.selectivity, s.range_lo, s.range_hi,
       e.corpus_precision, e.base_precision, e.range_precision, e.n_categories
FROM scores s
LEFT JOIN corpus_evidence e
  ON e.model = s.model AND e.concept = s.concept AND e.layer = s.layer AND e.neuron = s.neuron
     AND e.corpus = $corpus
WHERE s.model = $model AND s.layer = $layer AND s.neuron = $neuron AND s.rank IS NOT NULL
ORDER BY s.rank
