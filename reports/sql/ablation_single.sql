-- Single-neuron ablations of one model x concept.
SELECT layer, neuron, method, metric, drop, z, off_target_drop, base_conf, ablated_conf, n_examples,
       p_value, q_value, specificity, coalesce(validated, false) AS validated
FROM ablations
WHERE model = $model AND concept = $concept AND mode = 'single'
ORDER BY layer, neuron, CASE method WHEN 'zero' THEN 0 WHEN 'mean' THEN 1 WHEN 'range' THEN 2 ELSE 3 END, method;
