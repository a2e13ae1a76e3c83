-- The stored top activating examples of selected neurons, with token-level activations.
WITH sel AS (SELECT unnest($layers) AS layer, unnest($neurons) AS neuron)
SELECT t.layer, t.neuron, t.example_id, t.activation, t.tokens, t.token_acts, e.text, e.label
FROM top_examples t
JOIN sel ON t.layer = sel.layer AND t.neuron = sel.neuron
LEFT JOIN examples e ON e.model = t.model AND e.concept = t.concept AND e.example_id = t.example_id
WHERE t.model = $model AND t.concept = $concept
QUALIFY row_number() OVER (PARTITION BY t.layer, t.neuron ORDER BY t.activation DESC) <= $n
ORDER BY t.layer, t.neuron, t.activation DESC;
