-- Fallback when top_examples is empty: the examples with the highest pooled activation.
SELECT layer, neuron, example_id, v AS activation, text, label
FROM neuron_values
WHERE v IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY layer, neuron ORDER BY v DESC, example_id) <= $n
ORDER BY layer, neuron, v DESC;
