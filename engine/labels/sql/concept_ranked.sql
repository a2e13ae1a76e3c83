-- The ranked neurons of one model x concept, with their probe ranges.
SELECT layer, neuron, rank, range_lo, range_hi
FROM scores
WHERE model = $model AND concept = $concept AND rank IS NOT NULL
ORDER BY rank
