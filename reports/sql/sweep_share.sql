-- Layer x concept: the share of each layer's neurons significant for each concept of one model
-- (lexical controls, `<concept>+control`, are not concepts of the sweep).
SELECT concept, layer, max(depth) AS depth, count(*) AS n_scored,
       count(*) FILTER (WHERE (significant AND NOT lexical)) AS n_sig,
       avg(CASE WHEN (significant AND NOT lexical) THEN 1.0 ELSE 0.0 END) AS share
FROM scores
WHERE model = $model AND concept NOT LIKE '%+control'
GROUP BY ALL ORDER BY concept, layer;
