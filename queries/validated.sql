-- description: Neurons whose single-neuron ablation beats random-neuron controls (z >= min_z, mode 'single'), joined with their scores.
-- param: model VARCHAR = NULL
-- param: concept VARCHAR = NULL
-- param: min_z DOUBLE = Z_MIN
SELECT
    a.model, a.concept, a.method, a.layer, a.neuron,
    s.rank, s.score, s.selectivity, s.q_value, s.depth,
    a.metric, a.base_conf, a.ablated_conf, a.drop,
    a.random_drop_mean, a.random_drop_std, a.z, a.off_target_drop, a.n_examples,
    a.run_id
FROM ablations AS a
LEFT JOIN scores AS s
  ON s.model = a.model AND s.concept = a.concept AND s.layer = a.layer AND s.neuron = a.neuron
WHERE a.mode = 'single'
  AND a.z >= $min_z
  AND isfinite(a.z)  -- not isnan(): DuckDB folds it away using Parquet min/max statistics, which ignore NaN
  AND ($model IS NULL OR a.model = $model)
  AND ($concept IS NULL OR a.concept = $concept)
ORDER BY a.model, a.concept, a.z DESC, a.layer, a.neuron, a.method
