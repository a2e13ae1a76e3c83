-- description: Per model × concept × corpus, the top-`top` ranked neurons on natural text: each one's corpus precision (share of its top corpus excerpts peaking on a concept word) in rank order, their mean beside the mean base precision of their layers (the expectation for a random neuron of the same layers), how many beat their layer's base, and the mean range precision and WordNet categories.
-- param: model VARCHAR = NULL
-- param: corpus VARCHAR = NULL
-- param: top INTEGER = 5
SELECT model, concept, corpus,
       count(*) AS n_neurons,
       list('L' || layer || '.N' || neuron ORDER BY rank) AS neurons,
       list(round(corpus_precision, 2) ORDER BY rank) AS precisions,
       avg(corpus_precision) AS mean_precision,
       avg(base_precision) AS mean_base_precision,
       count(*) FILTER (WHERE corpus_precision > base_precision) AS n_above_base,
       avg(range_precision) AS mean_range_precision,
       avg(n_categories) AS mean_categories
FROM corpus_evidence
WHERE rank <= $top
  AND NOT ends_with(concept, '+control')
  AND ($model IS NULL OR model = $model)
  AND ($corpus IS NULL OR corpus = $corpus)
GROUP BY model, concept, corpus
ORDER BY model, concept, corpus
