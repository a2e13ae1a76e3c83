-- The pooled activations of selected neurons (one column of each layer's acts list),
-- with each example's label and group. $layers and $neurons are zipped lists.
WITH sel AS (SELECT unnest($layers) AS layer, unnest($neurons) AS neuron)
SELECT sel.layer, sel.neuron, a.example_id, e.label, e.grp, e.split, e.text,
       CAST(list_extract(a.acts, sel.neuron + 1) AS DOUBLE) AS v
FROM activations a
JOIN sel ON a.layer = sel.layer
JOIN examples e ON e.model = a.model AND e.concept = a.concept AND e.example_id = a.example_id
WHERE a.model = $model AND a.concept = $concept
