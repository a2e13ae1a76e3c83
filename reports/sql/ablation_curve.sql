-- The top-k ablations (cumulative rows) of one model x concept, by method.
SELECT method, k, metric, base_conf, ablated_conf, drop, random_drop_mean, random_drop_std, z,
       off_target_drop, n_examples, n_controls, p_value, q_value, specificity,
       coalesce(validated, false) AS validated
FROM ablations
WHERE model = $model AND concept = $concept AND mode = 'cumulative'
ORDER BY method, k;
