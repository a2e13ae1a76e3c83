-- Top-k agreement of the three rankings of one model x concept: ours (rank, among q < alpha),
-- probeless (|mean_pos - mean_neg|) and the elastic-net probe (|weight|), all on train.
WITH s AS (
    SELECT layer, neuron,
           coalesce(rank <= $k, false) AS ours,
           coalesce(rank_probeless <= $k, false) AS probeless,
           coalesce(rank_probe <= $k, false) AS probe
    FROM scores WHERE model = $model AND concept = $concept
)
SELECT count(*) FILTER (WHERE ours) AS n_ours,
       count(*) FILTER (WHERE probeless) AS n_probeless,
       count(*) FILTER (WHERE probe) AS n_probe,
       count(*) FILTER (WHERE ours AND probeless) AS ours_probeless,
       count(*) FILTER (WHERE ours AND probe) AS ours_probe,
       count(*) FILTER (WHERE probeless AND probe) AS probeless_probe,
       count(*) FILTER (WHERE ours AND probeless AND probe) AS all_three,
       list('L' || layer || '.N' || neuron ORDER BY layer, neuron)
           FILTER (WHERE ours AND probeless AND probe) AS robust
FROM s;
