-- Single-neuron ablations of one model x concept.
SELECT layer, neuron, method, drop, z, off_target_drop, base_conf, ablated_conf, n_examples
FROM ablations
WHERE model = $model AND concept = $concept AND mode = 'single'
ORDER BY layer, neuron, method;
