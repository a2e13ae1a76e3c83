-- Layer x concept: the share of each layer's neurons significant for each concept of one model.
SELECT concept, layer, max(depth) AS depth, count(*) AS n_scored,
       count(*) FILTER (WHERE q_value < $alpha) AS n_sig,
       avg(CASE WHEN q_value < $alpha THEN 1.0 ELSE 0.0 END) AS share
FROM scores
WHERE model = $model
GROUP BY ALL ORDER BY concept, layer;
