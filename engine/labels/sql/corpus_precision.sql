-- Per scanned neuron: the share of its top-k corpus excerpts whose maximum falls on one of the
-- concept's words ($words, lowercase), and the distinct categories those maxima fall in.
SELECT layer, neuron,
       avg(CASE WHEN list_contains($words, word) THEN 1.0 ELSE 0.0 END) AS corpus_precision,
       count(DISTINCT category)::INTEGER AS n_categories,
       list(DISTINCT category ORDER BY category) FILTER (WHERE category IS NOT NULL) AS categories
FROM corpus_top
WHERE model = $model AND corpus = $corpus AND kind = 'top'
GROUP BY layer, neuron
ORDER BY layer, neuron
