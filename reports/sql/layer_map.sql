-- Layer x neuron-index heatmap: the best selectivity within each block of neuron indices.
WITH s AS (SELECT * FROM scores WHERE model = $model AND concept = $concept),
w AS (SELECT max(neuron) + 1 AS width FROM s)
SELECT s.layer,
       CAST(floor(s.neuron * $bins / w.width) AS INTEGER) AS bin,
       min(s.neuron) AS first_neuron, max(s.neuron) AS last_neuron,
       max(s.selectivity) AS max_selectivity,
       arg_max('L' || s.layer || '.N' || s.neuron, s.selectivity) AS best_neuron,
       count(*) FILTER (WHERE (s.significant AND NOT s.lexical)) AS n_sig
FROM s, w
GROUP BY ALL
ORDER BY s.layer, bin;
