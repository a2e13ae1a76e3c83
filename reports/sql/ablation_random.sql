-- Random control sets (one row per set): the drop of k random neurons from the same layers.
SELECT method, k, drop
FROM ablations
WHERE model = $model AND concept = $concept AND mode = 'random' AND drop IS NOT NULL
ORDER BY method, k;
