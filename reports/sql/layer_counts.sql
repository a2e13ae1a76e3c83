-- Per layer: neurons scored and significant, for one model x concept.
SELECT layer, count(*) AS n_scored, count(*) FILTER (WHERE (significant AND NOT lexical)) AS n_sig,
       max(selectivity) AS max_selectivity
FROM scores
WHERE model = $model AND concept = $concept
GROUP BY layer ORDER BY layer;
